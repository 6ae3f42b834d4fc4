"""FID comparable with published numbers: pytorch-fid's features, statistics and distance.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium", eq. 6) is

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

between Gaussians fitted to the 2048-d pool features of the FID Inception-V3
(``jaxdiff.inception``). Each step here is pytorch-fid's (``pytorch_fid.fid_score``):

* ``inception_features``: images as pytorch-fid reads PNG files (uint8 levels / 255,
  grey replicated to RGB), resized to 299x299 bilinearly, through the network;
* ``gaussian_fit``: ``np.mean`` and ``np.cov(rowvar=False)`` (unbiased) in float64;
* ``frechet_distance``: ``scipy.linalg.sqrtm`` of the non-symmetric product S1 S2; when that
  is not finite, ``eps * I`` is added to both covariances; a complex result is accepted only
  when its diagonal's imaginary part is below 1e-3;
* ``save_stats`` / ``load_stats``: the ``.npz`` with ``mu`` and ``sigma`` that pytorch-fid's
  ``--save-stats`` writes and reads.

``jaxdiff.evaluation.frechet_distance`` (the symmetric-eigendecomposition form of the same
distance) serves the classifier-feature FID; this one reproduces pytorch-fid's numbers.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff import inception, xla_options


def to_pytorch_fid_input(images: jax.Array, *, quantize: bool) -> jax.Array:
    """(B, H, W, 1 or 3) in [-1, 1] -> (B, H, W, 3) in [0, 1] as pytorch-fid reads images:
    with ``quantize``, rounded to the uint8 levels a PNG holds (``jaxdiff.viz.to_uint8``: NaN
    to black, clipped) and divided by 255 (``ToTensor``); grey replicated to RGB (PIL's
    ``convert('RGB')``)."""
    images = jnp.clip(jnp.nan_to_num(images.astype(jnp.float32), nan=-1.0), -1.0, 1.0)
    if quantize:
        x = jnp.round((images + 1.0) * 127.5) / 255.0
    else:
        x = (images + 1.0) / 2.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x


def preprocess(images: jax.Array, *, quantize: bool) -> jax.Array:
    """Images in [-1, 1] of any size -> the network's (B, 299, 299, 3) input in [-1, 1]."""
    return 2.0 * inception.resize_299(to_pytorch_fid_input(images, quantize=quantize)) - 1.0


@functools.cache
def _compiled(mesh: Mesh | None, quantize: bool):
    """The jitted preprocessing and network for one mesh (cached, so each input shape
    compiles once per process; the network's program is the same for both ``quantize``),
    with the batch and replicated shardings (None, None without a mesh)."""
    if mesh is None:
        batch, replicated = None, None
    else:
        axes = mesh.axis_names[0] if len(mesh.axis_names) == 1 else tuple(mesh.axis_names)
        batch, replicated = NamedSharding(mesh, P(axes)), NamedSharding(mesh, P())
    prep = jax.jit(functools.partial(preprocess, quantize=quantize), in_shardings=batch,
                   out_shardings=batch)
    return prep, _network(batch, replicated), batch, replicated


@functools.cache
def _network(batch: NamedSharding | None, replicated: NamedSharding | None):
    """The network, compiled with jaxdiff's CPU options (``jaxdiff.xla_options``: on the
    CPU they ran it about 2x faster than XLA's defaults, which hand its convolutions to
    YNNPACK)."""
    net = inception.InceptionV3FID()
    return xla_options.jit(lambda p, x: net.apply({"params": p}, x),
                           in_shardings=(replicated, batch), out_shardings=replicated)


def inception_features(
    params: Any,
    images: np.ndarray | jax.Array,
    *,
    quantize: bool = True,
    batch_size: int = 50,
    mesh: Mesh | None = None,
    progress: Any = None,
) -> np.ndarray:
    """pytorch-fid's 2048-d pool features of images (B, H, W, 1 or 3) in [-1, 1], any H, W.

    Args:
      params: ``jaxdiff.inception.load_pytorch_fid_weights(path)``.
      images: NHWC in [-1, 1] (numpy or a jax array; the same on every process).
      quantize: round to uint8 levels first, as when images are saved as PNG files and
        then read by pytorch-fid (so generated and real images are treated alike).
      batch_size: images per network call (the last batch is padded: one compile); with a
        mesh it is rounded up to a multiple of the mesh's device count, each device
        computing its share.
      mesh: shard each batch over every axis of this mesh (params replicated).
      progress: optional ``tqdm`` bar, advanced by the images done.

    Returns:
      (B, 2048) float32 numpy features, on every process.
    """
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"inception_features needs images (B, H, W, 1 or 3), got {images.shape}")
    n = images.shape[0]
    devices = 1 if mesh is None else mesh.size
    batch_size = -(-min(batch_size, n) // devices) * devices
    prep, apply, batch_sharding, replicated = _compiled(mesh, quantize)
    if replicated is not None:
        params = jax.device_put(params, replicated)
    out = []
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start : start + batch_size], np.float32)
        pad = batch_size - len(batch)
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        if batch_sharding is not None:  # each process places its devices' rows
            batch = jax.make_array_from_callback(batch.shape, batch_sharding,
                                                 lambda index, b=batch: b[index])
        features = apply(params, prep(batch))
        out.append(np.asarray(jax.device_get(features))[: batch_size - pad])
        if progress is not None:
            progress.update(batch_size - pad)
    return np.concatenate(out)


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: mean (D,) and unbiased covariance (D, D) of features (N >= 2, D), in
    float64 (pytorch-fid's ``calculate_activation_statistics``)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"gaussian_fit needs features of shape (N >= 2, D), got {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """The squared Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. eq.
    6), computed as pytorch-fid's ``calculate_frechet_distance`` (Dougal Sutherland's stable
    version): ``sqrtm(S1 S2)``, with ``eps * I`` added to both covariances when the product
    is singular enough to give a non-finite root, and the real part kept when rounding
    leaves a small imaginary one. Raises ValueError on an imaginary diagonal part above
    1e-3 or on mismatched shapes."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or (
            sigma1.shape != (mu1.shape[0],) * 2):
        raise ValueError(f"frechet_distance needs means (D,) and covariances (D, D) with one D; "
                         f"got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        print(f"fid calculation produces singular product; adding {eps} to diagonal of cov "
              "estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def save_stats(path: str | pathlib.Path, mu: np.ndarray, sigma: np.ndarray) -> pathlib.Path:
    """Writes ``mu`` and ``sigma`` to ``path`` as pytorch-fid's ``--save-stats`` does (.npz)."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"reference statistics are an .npz file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, mu=mu, sigma=sigma)
    return path


def load_stats(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of an .npz written by pytorch-fid (``--save-stats``) or ``save_stats``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference statistics at {path}")
    with np.load(path) as stats:
        if "mu" not in stats.files or "sigma" not in stats.files:
            raise ValueError(f"{path} holds {stats.files}, not pytorch-fid's 'mu' and 'sigma'")
        return stats["mu"][:], stats["sigma"][:]
