"""The learned reverse-process variance of Improved DDPM (Nichol & Dhariwal 2021, sec. 3.1):
a model with 2C outputs predicts, next to eps, a per-pixel v in [-1, 1] that interpolates
the log variance between DDPM's two fixed choices,

    log Sigma_theta(x_t, t) = (v + 1)/2 log beta_t + (1 - v)/2 log beta_tilde_t   (eq. 15)

(diffusers' ``DDPMScheduler(variance_type="learned_range")``; DiT keeps it, sec. 3.1 of
Peebles & Xie 2023). Deterministic samplers (DDIM, DPM-Solver) use the eps half only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.samplers._core import alpha_bar_prev
from jaxdiff.schedules import Schedule

# beta_tilde_0 = 0; its log is clipped as diffusers clamps the variance at 1e-20.
MIN_VARIANCE = 1e-20


def split_learned(output: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 2C) model output -> (eps-or-x0-or-v half, variance half v), each (B, H, W, C)."""
    if output.shape[-1] % 2:
        raise ValueError(f"a learned-variance output has 2C channels, got {output.shape[-1]}")
    return jnp.split(output, 2, axis=-1)


def learned_range_log_variance(schedule: Schedule, t: jax.Array, v: jax.Array) -> jax.Array:
    """Improved DDPM eq. 15 at the scalar timestep index ``t``: log Sigma from v (any shape).

    beta_t is written 1 - ab_t / ab_{t-1} and beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t)
    beta_t, as diffusers' scheduler computes them (the same numbers as the schedule's).
    """
    ab = schedule.alpha_bars[t].astype(jnp.float32)
    ab_prev = alpha_bar_prev(schedule, t, jnp.float32)
    beta = 1.0 - ab / ab_prev
    beta_tilde = jnp.maximum((1.0 - ab_prev) / (1.0 - ab) * beta, MIN_VARIANCE)
    frac = (v.astype(jnp.float32) + 1.0) / 2.0
    return frac * jnp.log(beta) + (1.0 - frac) * jnp.log(beta_tilde)
