"""Guidance: wrappers that take a denoise_fn and return a denoise_fn.

``denoise_fn(x_t, t, cond) -> output`` is what samplers consume (see ``samplers``), so a
guided sampler is just ``ddim(cfg(denoise_fn, guidance_scale=3.0, num_classes=10), ...)``.

* ``cfg``: classifier-free guidance (Ho & Salimans 2022, eq. 6).
* ``classifier_guidance``: the gradient of a noise-conditioned classifier's log p(y | x_t, t)
  shifts eps (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4.2, eq. 14 / alg. 2).
  It composes with ``cfg``: ``classifier_guidance(cfg(denoise_fn, ...), classifier_fn, ...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import conditioning, schedules

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
# classifier_fn(x_t (B, H, W, C), t (B,) int32) -> logits (B, K)
ClassifierFn = Callable[[jax.Array, jax.Array], jax.Array]


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


def classifier_guidance(
    denoise_fn: DenoiseFn,
    classifier_fn: ClassifierFn,
    schedule: schedules.Schedule,
    *,
    scale: float | jax.Array,
    prediction: schedules.Prediction = "eps",
) -> DenoiseFn:
    """Classifier guidance in score form, Dhariwal & Nichol 2021, eq. 14 and alg. 2:

    eps'(x_t) = eps(x_t) - s sqrt(1 - alpha_bar_t) grad_{x_t} log p_phi(y | x_t, t),

    s = ``scale``. Since eps = -sqrt(1 - alpha_bar_t) grad log p(x_t), this is the eps of
    p(x_t) p(y | x_t)^s, so every sampler that reads eps (DDPM, DDIM, DPM-Solver++) samples
    the guided distribution without a change; the gradient is taken in the sampler's scan,
    at the x_t and t it is called with. (Alg. 1, for DDPM, shifts the mean by s Sigma grad
    instead; with Sigma = beta_t the two agree to first order.)

    ``classifier_fn(x_t, t) -> logits`` (B, K) must treat examples independently (no batch
    statistics); then one gradient of sum_i log p(y_i | x_i) gives every example's own
    gradient, each toward its own label ``y = cond`` (int (B,), or a dict's 'label'), in
    one backward pass over the whole batch. ``cond`` is passed on to ``denoise_fn`` as is:
    an unconditional model's denoise_fn ignores it, a conditional one (e.g. ``cfg(...)``)
    uses the same labels, so both guidances act at once.

    ``prediction``: what ``denoise_fn`` outputs (eps, x0 or v). The shift is made on eps and
    mapped back at the same x_t (x0 = (x_t - sigma eps) / alpha is affine in eps), i.e.
    ``schedules.target`` of the (x0, eps) shift: d_x0 = -sigma/alpha d_eps and
    d_v = d_eps / alpha. So ``to_x0_eps`` of the result is the guided (x0, eps), and the
    output is ``denoise_fn``'s plus a term that is exactly 0 at s = 0 (a Python 0 returns
    ``denoise_fn`` itself).

    Shapes: x_t (B, H, W, C), t (B,); output like x_t. The classifier and ``schedule`` must
    share the diffusion run's schedule (experiments/runs/classifier.py checks the configs).
    """
    schedules.check_prediction(prediction)
    if isinstance(scale, (int, float)) and scale == 0:
        return denoise_fn

    def guided(x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        labels = class_labels(cond)
        out = denoise_fn(x_t, t, cond)
        grad = log_prob_grad(classifier_fn, x_t, t, labels)
        alpha_bar = schedules.per_example(schedule.alpha_bars[t], like=x_t)
        sigma, alpha = jnp.sqrt(1.0 - alpha_bar), jnp.sqrt(alpha_bar)
        d_eps = -scale * sigma * grad
        d_out = schedules.target(schedule, -(sigma / alpha) * d_eps, t, d_eps, prediction)
        return out + d_out.astype(out.dtype)

    return guided


def log_prob_grad(
    classifier_fn: ClassifierFn, x_t: jax.Array, t: jax.Array, labels: jax.Array
) -> jax.Array:
    """grad_{x_t} log p(y | x_t, t) with log p = log_softmax(classifier_fn(x_t, t))[y], for
    each example at once: the gradient of sum_i log p(y_i | x_i) (B, H, W, C), float32."""

    def total_log_prob(x):
        logits = classifier_fn(x, t).astype(jnp.float32)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    return jax.grad(total_log_prob)(x_t.astype(jnp.float32))


def class_labels(cond: Any) -> jax.Array:
    """The int labels (B,) a classifier guides toward: ``cond`` itself or its 'label'."""
    labels = cond.get("label") if isinstance(cond, dict) else cond
    if labels is None or not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ValueError(
            "classifier guidance needs int class labels (B,) as cond (or a dict with "
            f"'label'); got {type(cond).__name__}. Pass cond=labels to the sampler."
        )
    return jnp.asarray(labels, jnp.int32)
