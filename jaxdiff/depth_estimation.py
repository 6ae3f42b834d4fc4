"""A small monocular depth estimator: an image-to-image network regressing a depth hint
(bright = near, ControlNet's MiDaS convention) from a grey image, so that the depth of a
sample can be read offline and compared with the depth hint it was given.

The network is any jaxdiff denoiser (e.g. ``models.unet.UNet`` with as many output as
input channels) called at timestep 0 without a condition: a plain image-to-image map. It
regresses the hint scaled to the image range, 2 h - 1, with the scale-invariant loss of
Eigen, Puhrsch & Fergus 2014 ("Depth Map Prediction from a Single Image using a
Multi-Scale Deep Network"), eq. 4 with lambda = 0.5, on log depth z = 1 - h, plus the mean
squared error of h itself, which pins the absolute scale the scale-invariant term leaves
free. ``estimate`` maps images to hints in [0, 1].

The loss reads batches ``{'image': (B, H, W, C) in [-1, 1], 'hint': (B, H, W, 1) in
[0, 1]}``: the records of ``jaxdiff.scenes`` (rendered scenes and their exact depth).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import hint_scores, losses

# log(z) of a predicted depth is taken at least at this depth (hint_scores.MIN_DEPTH).
MIN_DEPTH = hint_scores.MIN_DEPTH
EIGEN_LAMBDA = 0.5  # Eigen et al. 2014, sec. 3.2: "we use lambda = 0.5"


def predict_hint(apply_fn: Callable[..., jax.Array], params: Any, images: jax.Array, *,
                 train: bool = False) -> jax.Array:
    """The network's depth hint of float images (B, H, W, C) in [-1, 1] -> (B, H, W, 1),
    unclipped: (output + 1) / 2 of its first channel, at timestep 0 with no condition."""
    t = jnp.zeros((images.shape[0],), jnp.int32)
    out = apply_fn({"params": params}, images, t, None, train=train).astype(jnp.float32)
    return (out[..., :1] + 1.0) / 2.0


def scale_invariant_loss(pred_depth: jax.Array, depth: jax.Array, *,
                         lam: float = EIGEN_LAMBDA) -> jax.Array:
    """Eigen et al. 2014 eq. 4, averaged over the batch: 1/n sum d_i^2 - lam / n^2
    (sum d_i)^2, d_i = log pred_i - log depth_i, over each image's n pixels (positive
    depths; ``hint_scores.scale_invariant_log_error`` is its numpy twin)."""
    d = (jnp.log(pred_depth) - jnp.log(depth)).reshape(depth.shape[0], -1)
    n = d.shape[1]
    return jnp.mean(jnp.mean(d**2, axis=1) - lam * jnp.sum(d, axis=1) ** 2 / n**2)


def make_depth_loss(apply_fn: Callable[..., jax.Array]) -> losses.LossFn:
    """loss = mean (h_pred - h)^2 + Eigen eq. 4 (lambda 0.5) on z = 1 - h, the predicted
    z clipped to [MIN_DEPTH, 1]. Metrics: ``loss``, ``rmse`` (of h on this batch) and
    ``si_log`` (eq. 4 with lambda = 1). ``key`` is unused (the loss is deterministic)."""

    def loss_fn(params: Any, batch: Any, key: jax.Array) -> tuple[jax.Array, dict]:
        del key
        if "hint" not in batch:
            raise ValueError(
                "the depth estimator trains on images with their depth: a batch with a "
                f"'hint' entry (B, H, W, 1) (data.source='scenes'); got keys {sorted(batch)}"
            )
        hint = jnp.asarray(batch["hint"], jnp.float32)
        pred = predict_hint(apply_fn, params, losses.batch_image(batch), train=True)
        mse = jnp.mean(jnp.square(pred - hint))
        pred_z = jnp.clip(1.0 - pred, MIN_DEPTH, 1.0)
        z = jnp.clip(1.0 - hint, MIN_DEPTH, 1.0)
        si = scale_invariant_loss(pred_z, z)
        return mse + si, {"loss": mse + si, "rmse": jnp.sqrt(mse),
                          "si_log": scale_invariant_loss(pred_z, z, lam=1.0)}

    return loss_fn


def make_estimator(apply_fn: Callable[..., jax.Array], params: Any,
                   *, batch_size: int = 256) -> Callable[[Any], Any]:
    """images (N, H, W, C) in [-1, 1] -> depth hints (N, H, W, 1) in [0, 1] (numpy), by the
    jitted network in batches of ``batch_size``."""
    import numpy as np

    step = jax.jit(lambda x: jnp.clip(predict_hint(apply_fn, params, x), 0.0, 1.0))

    def estimate(images: Any) -> np.ndarray:
        images = np.asarray(images, np.float32)
        return np.concatenate([
            np.asarray(step(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ])

    return estimate
