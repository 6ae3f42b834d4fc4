"""Guidance: wrappers that take a denoise_fn and return a denoise_fn.

``denoise_fn(x_t, t, cond) -> output`` is what samplers consume (see ``samplers``), so a
guided sampler is just ``ddim(cfg(denoise_fn, guidance_scale=3.0, num_classes=10), ...)``.
Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", alg. 1/2) will
be a sibling wrapper here with the same contract, shifting eps by the noisy classifier's
grad log p(y | x_t); it is not built yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import conditioning

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def cfg(
    denoise_fn: DenoiseFn,
    *,
    guidance_scale: float | jax.Array,
    num_classes: int | None = None,
) -> DenoiseFn:
    """Classifier-free guidance, Ho & Salimans 2022, eq. 6:

    out = (1 + w) * out(x_t, cond) - w * out(x_t, null),   w = ``guidance_scale``.

    w = 0 is the plain conditional model (returned as is when w is a Python number); w > 0
    pushes samples toward the condition at the cost of diversity. The conditional and
    null halves run in ONE call of ``denoise_fn`` on a 2B batch (x_t twice, cond then
    ``conditioning.null_cond(cond)``), which is cheaper than two calls and keeps one
    compiled model in the sampler's scan. The paper combines eps; the combination is linear,
    so it is equally valid for x0 or v outputs.

    ``num_classes`` is needed for int labels (the null label is ``num_classes``); float
    contexts are nulled to zeros and a dict's ``hint`` is kept (see ``conditioning``).
    Shapes: x_t (B, H, W, C), t (B,), cond with batch B; output (B, H, W, C).
    """
    if isinstance(guidance_scale, (int, float)) and guidance_scale == 0:
        return denoise_fn
    w = guidance_scale

    def guided(x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        if cond is None:
            raise ValueError(
                "classifier-free guidance needs a condition (labels or context); got "
                "cond=None. Pass cond= to the sampler, or use guidance_scale=0."
            )
        null = conditioning.null_cond(cond, num_classes=num_classes)
        out = denoise_fn(
            jnp.concatenate([x_t, x_t], axis=0),
            jnp.concatenate([t, t], axis=0),
            conditioning.concat_cond(cond, null),
        )
        out_cond, out_null = jnp.split(out, 2, axis=0)
        return (1.0 + w) * out_cond - w * out_null

    return guided
