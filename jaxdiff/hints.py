"""ControlNet hint maps (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models", sec. 4 and appendix: Canny, Hough lines, scribbles, segmentation, depth).

Every hint function takes a batch of images and returns ``float32`` maps in [0, 1], NHWC,
one channel, the images' height and width. Images are either ``uint8`` (N, H, W, C) in
[0, 255] or floats (N, H, W, C) in [-1, 1] (the jaxdiff image contract); colour images
are first made grey with OpenCV's BT.601 weights (``cv2.COLOR_RGB2GRAY``).

* ``canny``: OpenCV's ``cv2.Canny`` (Canny 1986), optionally after ``cv2.GaussianBlur``.
* ``canny_jax``: the same algorithm in pure JAX, jit-able and batched, so a train step can
  make its hints on device: Gaussian blur, 3x3 Sobel with replicated borders, L1 or L2
  gradient magnitude, non-maximum suppression with OpenCV's integer sector test (tan 22.5
  degrees as 13573 / 2**15) and tie-breaking (strictly greater than the left/upper
  neighbour, greater-or-equal to the right/lower one), double threshold (weak: magnitude
  > low, strong: > high) and hysteresis as iterated 3x3 dilation of the strong pixels
  inside the weak ones (``lax.while_loop`` until nothing changes), 8-connected as OpenCV's
  stack-based tracking. Without blur it reproduces ``cv2.Canny`` bit for bit.
* ``hough``: ``cv2.HoughLinesP`` on the Canny edges, the segments drawn on a blank map
  (ControlNet's M-LSD/Hough hint).
* ``scribble``: thick, jittered strokes synthesised from the edges, as ControlNet's
  authors made their scribble data from HED edges (smooth random displacement, dilation).
* ``segmentation``: grey levels clustered into ``num_regions`` regions by 1-D k-means
  (or equal-width thresholds), region k of K drawn as k / (K - 1), ordered dark to bright.
* ``load_depth``: depth maps the user supplies (``.npy``, 8- or 16-bit PNG). No monocular
  depth model (MiDaS, as ControlNet used) can be downloaded here; ``jaxdiff.scenes``
  renders scenes with their exact depth instead.

``edge_f1`` scores two binary maps at exact pixels (no distance tolerance).
"""

from __future__ import annotations

import pathlib
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

HINT_TYPES = ("canny", "hough", "scribble", "segmentation", "depth")

# OpenCV's fixed-point NMS sector test (imgproc/src/canny.cpp): |dy| << 15 against
# |dx| * round(tan(22.5 deg) * 2**15).
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)
# cv2.COLOR_RGB2GRAY on uint8: Y = (4899 R + 9617 G + 1868 B + 2**13) >> 14.
_GRAY_WEIGHTS = (4899, 9617, 1868)


# --------------------------------------------------------------------------- inputs


def to_gray_uint8(images: Any) -> np.ndarray:
    """(N, H, W, C) uint8 in [0, 255] or float in [-1, 1] -> (N, H, W) uint8 grey."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"hints want NHWC images (N, H, W, C), got shape {images.shape}")
    if images.dtype != np.uint8:
        images = np.round((np.clip(images.astype(np.float32), -1, 1) + 1) * 127.5)
        images = images.astype(np.uint8)
    if images.shape[-1] == 1:
        return images[..., 0]
    if images.shape[-1] != 3:
        raise ValueError(f"hints take 1- or 3-channel images, got {images.shape[-1]} channels")
    return np.stack([cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in images])


def _gray_int_jax(images: jax.Array) -> jax.Array:
    """The JAX twin of ``to_gray_uint8``: (N, H, W, C) uint8 in [0, 255] or float in
    [-1, 1] -> (N, H, W) int32 grey."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"hints want NHWC images with 1 or 3 channels, got shape {images.shape}")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.int32)
    else:
        x = jnp.round((jnp.clip(images.astype(jnp.float32), -1, 1) + 1) * 127.5)
        x = x.astype(jnp.int32)
    if x.shape[-1] == 1:
        return x[..., 0]
    w = jnp.asarray(_GRAY_WEIGHTS, jnp.int32)
    return (jnp.sum(x * w, axis=-1) + (1 << 13)) >> 14


def _as_map(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) of 0/255 or bool -> (N, H, W, 1) float32 in [0, 1]."""
    maps = np.asarray(maps)
    scale = 255.0 if maps.dtype == np.uint8 else 1.0
    return (maps.astype(np.float32) / scale)[..., None]


# --------------------------------------------------------------------------- Canny


def _check_blur(blur_ksize: int) -> None:
    """OpenCV's Gaussian kernels have an odd size (a centre pixel); 0 means no blur."""
    if blur_ksize < 0 or (blur_ksize and blur_ksize % 2 == 0):
        raise ValueError(f"blur_ksize must be 0 (no blur) or an odd size such as 3 or 5, "
                         f"got {blur_ksize}")


def _blur_cv2(gray: np.ndarray, blur_ksize: int, blur_sigma: float) -> np.ndarray:
    _check_blur(blur_ksize)
    if not blur_ksize:
        return gray
    return cv2.GaussianBlur(gray, (blur_ksize, blur_ksize), blur_sigma)


def canny(
    images: Any,
    *,
    low: float = 100.0,
    high: float = 200.0,
    l2_gradient: bool = False,
    blur_ksize: int = 0,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """``cv2.Canny(gray, low, high, L2gradient=l2_gradient)`` per image -> (N, H, W, 1) in
    {0, 1}. ``blur_ksize`` > 0 first applies ``cv2.GaussianBlur`` with that odd kernel size
    and ``blur_sigma`` (0: OpenCV's default sigma for the size). Thresholds are on the
    Sobel gradient magnitude of the 0..255 grey image (|dx| + |dy|, or the L2 norm)."""
    gray = to_gray_uint8(images)
    edges = [
        cv2.Canny(_blur_cv2(g, blur_ksize, blur_sigma), low, high, L2gradient=l2_gradient)
        for g in gray
    ]
    return _as_map(np.stack(edges))


def _gaussian_blur_jax(x: jax.Array, blur_ksize: int, blur_sigma: float) -> jax.Array:
    """cv2.GaussianBlur's separable kernel (``cv2.getGaussianKernel``) with its default
    BORDER_REFLECT_101, in float32, rounded back to integers as OpenCV's uint8 output."""
    kernel = cv2.getGaussianKernel(blur_ksize, blur_sigma).astype(np.float32)[:, 0]
    r = blur_ksize // 2
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = x.shape[1] - 2 * r, x.shape[2] - 2 * r
    x = sum(kernel[k] * x[:, :, k : k + w] for k in range(blur_ksize))
    x = sum(kernel[k] * x[:, k : k + h, :] for k in range(blur_ksize))
    return jnp.floor(x + 0.5).astype(jnp.int32)


def _sobel(gray: jax.Array) -> tuple[jax.Array, jax.Array]:
    """3x3 Sobel dx, dy (int32) with replicated borders, as canny.cpp's cv::Sobel calls."""
    p = jnp.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = gray.shape[1:]
    diff_x = p[:, :, 2:] - p[:, :, :-2]  # (N, H+2, W)
    dx = diff_x[:, :h] + 2 * diff_x[:, 1 : h + 1] + diff_x[:, 2:]
    diff_y = p[:, 2:, :] - p[:, :-2, :]  # (N, H, W+2)
    dy = diff_y[:, :, :w] + 2 * diff_y[:, :, 1 : w + 1] + diff_y[:, :, 2:]
    return dx, dy


def _thresholds(low: float, high: float, l2_gradient: bool) -> tuple[int, int]:
    """canny.cpp: swap if low > high; for L2, clamp to 32767 and square; then floor."""
    low, high = sorted((float(low), float(high)))
    if l2_gradient:
        low, high = (min(32767.0, v) for v in (low, high))
        low, high = (v * v if v > 0 else v for v in (low, high))
    return int(np.floor(low)), int(np.floor(high))


def canny_jax(
    images: jax.Array,
    *,
    low: float = 100.0,
    high: float = 200.0,
    l2_gradient: bool = False,
    blur_ksize: int = 0,
    blur_sigma: float = 0.0,
) -> jax.Array:
    """Pure-JAX Canny edges of images (N, H, W, C), uint8 in [0, 255] or float in [-1, 1],
    -> (N, H, W, 1) float32 in {0, 1}; the same algorithm, conventions and arguments as
    ``canny`` (see the module docstring). jit-able (the options are static Python values)
    and vmap-able."""
    _check_blur(blur_ksize)
    gray = _gray_int_jax(jnp.asarray(images))
    if blur_ksize:
        gray = _gaussian_blur_jax(gray, blur_ksize, blur_sigma)
    dx, dy = _sobel(gray)
    mag = dx * dx + dy * dy if l2_gradient else jnp.abs(dx) + jnp.abs(dy)
    lo, hi = _thresholds(low, high, l2_gradient)

    # Outside the image the magnitude is 0 (canny.cpp's zeroed border of its ring buffer).
    p = jnp.pad(mag, ((0, 0), (1, 1), (1, 1)))
    h, w = mag.shape[1:]

    def at(di: int, dj: int) -> jax.Array:
        return p[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]

    ax, ay = jnp.abs(dx), jnp.abs(dy) << _CANNY_SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_CANNY_SHIFT + 1))
    same_sign = (dx ^ dy) >= 0
    horizontal = (mag > at(0, -1)) & (mag >= at(0, 1))
    vertical = (mag > at(-1, 0)) & (mag >= at(1, 0))
    diagonal = jnp.where(
        same_sign,
        (mag > at(-1, -1)) & (mag > at(1, 1)),
        (mag > at(-1, 1)) & (mag > at(1, -1)),
    )
    peak = jnp.where(ay < tg22x, horizontal, jnp.where(ay > tg67x, vertical, diagonal))
    weak = peak & (mag > lo)
    strong = weak & (mag > hi)
    return _hysteresis(strong, weak).astype(jnp.float32)[..., None]


def _dilate3x3(x: jax.Array) -> jax.Array:
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    out = x
    for di in range(3):
        for dj in range(3):
            out = out | p[:, di : di + h, dj : dj + w]
    return out


def _hysteresis(strong: jax.Array, weak: jax.Array) -> jax.Array:
    """Weak pixels 8-connected to a strong one, by iterated dilation until a fixed point."""

    def grow(state):
        edges, _ = state
        new = _dilate3x3(edges) & weak
        return new, jnp.any(new != edges)

    edges, _ = jax.lax.while_loop(lambda s: s[1], grow, (strong, jnp.array(True)))
    return edges


# --------------------------------------------------------------------------- other hints


def hough(
    images: Any,
    *,
    low: float = 100.0,
    high: float = 200.0,
    threshold: int = 4,
    min_line_length: float = 3.0,
    max_line_gap: float = 1.0,
    thickness: int = 1,
) -> np.ndarray:
    """Straight segments of ``cv2.HoughLinesP`` (rho 1 px, theta 1 degree) over ``canny``'s
    edges, drawn with ``cv2.line`` on a blank map -> (N, H, W, 1) in {0, 1}. ``threshold``
    is the accumulator vote count; the defaults suit 16x16..28x28 digits."""
    edges = (canny(images, low=low, high=high)[..., 0] * 255).astype(np.uint8)
    maps = np.zeros_like(edges)
    for edge, out in zip(edges, maps, strict=True):
        lines = cv2.HoughLinesP(
            edge, 1, np.pi / 180, threshold, minLineLength=min_line_length,
            maxLineGap=max_line_gap,
        )
        for x1, y1, x2, y2 in [] if lines is None else lines.reshape(-1, 4):
            cv2.line(out, (int(x1), int(y1)), (int(x2), int(y2)), 255, thickness)
    return _as_map(maps)


def scribble(
    images: Any,
    *,
    seed: int = 0,
    low: float = 100.0,
    high: float = 200.0,
    jitter: float = 0.75,
    smoothness: float = 2.0,
    thickness: int = 1,
) -> np.ndarray:
    """Scribble-like strokes from ``canny``'s edges -> (N, H, W, 1) in {0, 1}.

    Each edge map is displaced by a smooth random field (white noise blurred with sigma
    ``smoothness`` px, scaled to ``jitter`` px standard deviation; ``cv2.remap``), then
    dilated with a ``thickness`` x ``thickness`` square, like the human-like scribbles the
    ControlNet authors synthesised from edges. Deterministic in ``seed``.
    """
    edges = canny(images, low=low, high=high)[..., 0]
    rng = np.random.default_rng(seed)
    n, h, w = edges.shape
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    kernel = np.ones((thickness, thickness), np.uint8)
    out = np.empty_like(edges)
    for k in range(n):
        field = rng.standard_normal((2, h, w)).astype(np.float32)
        field = np.stack([cv2.GaussianBlur(f, (0, 0), smoothness) for f in field])
        field *= jitter / max(float(field.std()), 1e-6)
        moved = cv2.remap(
            edges[k], grid_x + field[0], grid_y + field[1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        out[k] = cv2.dilate((moved > 0.25).astype(np.uint8), kernel) > 0
    return out[..., None].astype(np.float32)


def segmentation(
    images: Any, *, num_regions: int = 3, method: str = "kmeans", iterations: int = 20
) -> np.ndarray:
    """Grey levels split into ``num_regions`` regions -> (N, H, W, 1) with values
    k / (num_regions - 1), k = 0 the darkest region.

    "kmeans": Lloyd's k-means on each image's grey values, in one dimension, started from
    centres at evenly spaced quantiles (deterministic, unlike OpenCV's randomly seeded
    ``cv2.kmeans``); clusters are ordered by their centre. "threshold": equal bins of
    [0, 255]. An image with fewer distinct levels than regions uses fewer values.
    """
    if num_regions < 2:
        raise ValueError(f"num_regions must be >= 2, got {num_regions}")
    gray = to_gray_uint8(images)
    if method == "threshold":
        levels = np.minimum(gray.astype(np.int32) * num_regions // 256, num_regions - 1)
        return _as_map(levels / (num_regions - 1))
    if method != "kmeans":
        raise ValueError(f"segmentation method must be 'kmeans' or 'threshold', got {method!r}")
    values = gray.reshape(len(gray), -1).astype(np.float32)  # (N, P)
    quantiles = (np.arange(num_regions) + 0.5) / num_regions
    centres = np.quantile(values, quantiles, axis=1).T  # (N, K), ascending
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, :, None] - centres[:, None, :]), axis=-1)
        for k in range(num_regions):
            members = labels == k
            count = members.sum(axis=1)
            mean = (values * members).sum(axis=1) / np.maximum(count, 1)
            centres[:, k] = np.where(count > 0, mean, centres[:, k])
    labels = np.argmin(np.abs(values[:, :, None] - centres[:, None, :]), axis=-1)
    # Centres stay in ascending order in 1-D k-means, but equal ones merge: rank them.
    rank = np.argsort(np.argsort(centres, axis=1, kind="stable"), axis=1, kind="stable")
    regions = np.take_along_axis(rank, labels, axis=1).reshape(gray.shape)
    return _as_map(regions / (num_regions - 1))


def load_depth(
    path: str | pathlib.Path, *, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """A depth map from a file -> (1, H, W, 1) float32 in [0, 1], resized to ``size``.

    ``.npy``: (H, W) or (H, W, 1) floats, min-max normalised (a constant map gives 0).
    PNG/other images: 8-bit maps are divided by 255, 16-bit ones by 65535. The convention
    is ControlNet's (MiDaS inverse depth): bright = near.
    """
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        depth = np.asarray(np.load(path), np.float32)
        depth = depth[..., 0] if depth.ndim == 3 and depth.shape[-1] == 1 else depth
        if depth.ndim != 2:
            raise ValueError(f"{path}: a depth .npy must be (H, W) or (H, W, 1), got {depth.shape}")
        span = float(depth.max() - depth.min())
        depth = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
    else:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read the depth image {path}")
        if raw.ndim == 3:
            raw = raw[..., 0]
        if raw.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{path}: depth PNGs must be 8- or 16-bit, got {raw.dtype}")
        depth = raw.astype(np.float32) / np.iinfo(raw.dtype).max
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        interpolation = cv2.INTER_AREA if hw[0] <= depth.shape[0] else cv2.INTER_LINEAR
        depth = cv2.resize(depth, hw[::-1], interpolation=interpolation)
    return np.clip(depth, 0.0, 1.0)[None, ..., None]


def make(images: Any, *, hint: str, seed: int = 0, **options: Any) -> np.ndarray:
    """The hint named ``hint`` (one of HINT_TYPES but "depth", which is read, not made)."""
    makers = {"canny": canny, "hough": hough, "scribble": scribble, "segmentation": segmentation}
    if hint not in makers:
        raise ValueError(
            f"hint {hint!r} cannot be computed from images; choose one of {sorted(makers)}"
        )
    if hint == "scribble":
        options["seed"] = seed
    return makers[hint](images, **options)


# --------------------------------------------------------------------------- scoring


def edge_f1(pred: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """Per-image F1 = 2 TP / (2 TP + FP + FN) of two maps binarised at ``threshold``, at
    exact pixels. Shapes (N, H, W, 1) -> (N,); two empty maps score 1."""
    p = np.asarray(pred) > threshold
    t = np.asarray(target) > threshold
    axes = tuple(range(1, p.ndim))
    tp = np.sum(p & t, axis=axes)
    wrong = np.sum(p ^ t, axis=axes)
    denominator = 2 * tp + wrong
    return np.where(denominator == 0, 1.0, 2 * tp / np.maximum(denominator, 1))
