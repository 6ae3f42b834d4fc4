"""Image grids and denoising animations (the seeds' ``plot_grid`` and ``plot_sample``).

Inputs are NHWC float arrays in [-1, 1] (numpy or jax); values outside are clipped. Grids
follow torchvision's ``make_grid`` (which the seeds call): ``padding`` black pixels around
and between images, rows filled left to right.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images) -> np.ndarray:
    """Maps [-1, 1] to [0, 255] (clipping outside, NaN to black): uint8, same shape."""
    x = np.nan_to_num(np.asarray(images, np.float32), nan=-1.0)
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def image_grid(
    images, *, ncol: int | None = None, padding: int = 2, scale: int = 1
) -> np.ndarray:
    """Tiles N images into one uint8 image.

    Shapes: images (N, h, w, C) in [-1, 1] -> (nrow (h + p) + p, ncol (w + p) + p, C) with
    p = ``padding``, ncol defaulting to ceil(sqrt(N)) and nrow = ceil(N / ncol). Empty cells
    of the last row stay black. ``scale`` > 1 enlarges each image by pixel repetition first
    (h, w -> scale h, scale w), so 16x16 samples stay visible in a viewer.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"image_grid expects NHWC images (N, H, W, C), got shape {images.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    nrow = max(1, math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for k, image in enumerate(to_uint8(images)):
        top = padding + (k // ncol) * (h + padding)
        left = padding + (k % ncol) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_grid(
    path, images, *, ncol: int | None = None, padding: int = 2, scale: int = 1
) -> pathlib.Path:
    """Writes ``image_grid(images)`` as a PNG (or any format Pillow infers from ``path``)."""
    path = _prepare(path)
    _to_pil(image_grid(images, ncol=ncol, padding=padding, scale=scale)).save(path)
    return path


def save_gif(
    path,
    trajectory,
    *,
    ncol: int | None = None,
    fps: float = 10,
    padding: int = 2,
    scale: int = 1,
) -> pathlib.Path:
    """Writes a denoising animation (the seed's ``plot_sample``): one grid per frame.

    Shapes: trajectory (K, N, h, w, C), e.g. a sampler's trajectory, -> a K-frame GIF that
    loops forever. Pillow merges consecutive identical frames (adding their durations), so
    a reader can see fewer frames when the sampler stood still.
    """
    trajectory = np.asarray(trajectory)
    if trajectory.ndim != 5 or trajectory.shape[0] < 1:
        raise ValueError(
            f"save_gif expects a trajectory (K, N, H, W, C) with K >= 1, got {trajectory.shape}"
        )
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = _prepare(path)
    frames = [
        _to_pil(image_grid(f, ncol=ncol, padding=padding, scale=scale)) for f in trajectory
    ]
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        duration=int(round(1000 / fps)),
        loop=0,
    )
    return path


def save_side_by_side(
    path,
    named_images: Mapping[str, object],
    *,
    ncol: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> pathlib.Path:
    """Writes grids next to each other with their names above, e.g. the seed's right-vs-wrong
    comparison ``{"ddpm": samples, "ddpm_no_noise": samples}``. Each value is (N, h, w, C)."""
    if not named_images:
        raise ValueError("save_side_by_side needs at least one {name: images} entry")
    grids = {
        name: image_grid(x, ncol=ncol, padding=padding, scale=scale)
        for name, x in named_images.items()
    }
    channels = {g.shape[-1] for g in grids.values()}
    if len(channels) != 1:
        raise ValueError(f"all image sets need the same channel count, got {sorted(channels)}")
    label_height, gap = 14, 8
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    # A panel is as wide as its grid or its label, whichever is wider, so names never overlap.
    panel_widths = {
        name: max(g.shape[1], math.ceil(measure.textlength(name)) + 4) for name, g in grids.items()
    }
    width = sum(panel_widths.values()) + gap * (len(grids) - 1)
    height = label_height + max(g.shape[0] for g in grids.values())
    canvas = np.zeros((height, width, channels.pop()), np.uint8)
    left, lefts = 0, {}
    for name, g in grids.items():
        canvas[label_height : label_height + g.shape[0], left : left + g.shape[1]] = g
        lefts[name] = left
        left += panel_widths[name] + gap
    image = _to_pil(canvas)
    draw = ImageDraw.Draw(image)
    for name, x in lefts.items():
        draw.text((x + 2, 1), name, fill=255 if image.mode == "L" else (255,) * len(image.mode))
    path = _prepare(path)
    image.save(path)
    return path


def display_scale(image_size: int, *, min_pixels: int = 48) -> int:
    """The ``scale`` that shows an image of side ``image_size`` at least ``min_pixels`` wide."""
    return max(1, -(-min_pixels // max(1, image_size)))


def _to_pil(grid: np.ndarray) -> Image.Image:
    if grid.shape[-1] == 1:
        return Image.fromarray(grid[..., 0])
    if grid.shape[-1] in (3, 4):
        return Image.fromarray(grid)
    raise ValueError(f"can only save 1, 3 or 4 channel images, got {grid.shape[-1]} channels")


def _prepare(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
