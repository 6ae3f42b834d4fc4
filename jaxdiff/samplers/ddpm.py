"""DDPM (Ho et al. 2020): the single-step algebra of the reverse process (eq. 7, eq. 11,
sec. 3.2), public so tests and notebooks can check it against the paper, and the ancestral
sampler over all T steps (alg. 2) with its no-noise teaching variant."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxdiff import schedules
from jaxdiff.samplers._core import (
    DenoiseFn,
    Result,
    alpha_bar_prev,
    initial,
    scan,
    step_noise,
    tables,
)
from jaxdiff.samplers.learned_variance import learned_range_log_variance, split_learned
from jaxdiff.schedules import Schedule


def eps_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """DDPM eq. 11: mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps).

    The mean of p(x_{t-1} | x_t) written with the predicted noise; the sprites seed's
    ``denoise_add_noise`` without its noise term. ``t`` is a scalar timestep index.
    """
    beta, alpha, ab = tables(schedule, t, x_t.dtype)
    return (x_t - beta / jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(alpha)


def posterior_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """DDPM eq. 7: mu_tilde = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0
    + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t, the mean of q(x_{t-1} | x_t, x0).

    Equal to ``eps_mean`` when x0 and eps are consistent with x_t (the tests check this);
    written with x0 so that a clipped x0 can be used. ``t`` is a scalar timestep index.
    """
    beta, alpha, ab = tables(schedule, t, x_t.dtype)
    ab_prev = alpha_bar_prev(schedule, t, x_t.dtype)
    # 1 - ab_t written as (1 - ab_prev) + ab_prev beta_t: the same number, but exactly beta_0
    # at the last step, so the final mean is exactly x0 instead of x0 * (1 +- 2e-4) from
    # float32 rounding in 1 - alpha_bar.
    one_minus_ab = (1.0 - ab_prev) + ab_prev * beta
    return (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - ab_prev) * x_t) / one_minus_ab


def posterior_variance(schedule: Schedule, t: jax.Array) -> jax.Array:
    """DDPM sec. 3.2: beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t (0 at the last step)."""
    beta, _, _ = tables(schedule, t, jnp.float32)
    ab_prev = alpha_bar_prev(schedule, t, jnp.float32)
    return (1.0 - ab_prev) * beta / ((1.0 - ab_prev) + ab_prev * beta)


VARIANCES = ("beta", "posterior", "learned_range")


def ddpm_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array, *,
              prediction: schedules.Prediction, clip_x0: bool) -> jax.Array:
    """mu(x_t) from a model output: eq. 7 on the clipped x0_hat, or eq. 11 unclipped."""
    t_batch = jnp.full((x_t.shape[0],), t, jnp.int32)
    x0, eps = schedules.to_x0_eps(schedule, x_t, t_batch, output, prediction)
    if clip_x0:
        return posterior_mean(schedule, x_t, t, jnp.clip(x0, -1.0, 1.0))
    return eps_mean(schedule, x_t, t, eps)


def ddpm_step(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
              noise: jax.Array, *, prediction: schedules.Prediction = "eps",
              clip_x0: bool = True, variance: str = "beta") -> jax.Array:
    """One step of alg. 2 at the scalar index ``t``: x_{t-1} = mu + sigma_t z (z = ``noise``,
    dropped at t = 0). ``variance`` "beta", "posterior" or "learned_range" (then ``output``
    has 2C channels, the eps/x0/v half first)."""
    if variance == "learned_range":
        output, v = split_learned(output)
        sigma = jnp.exp(0.5 * learned_range_log_variance(schedule, t, v))
    else:
        var = schedule.betas[t] if variance == "beta" else posterior_variance(schedule, t)
        sigma = jnp.sqrt(var)
    mean = ddpm_mean(schedule, x_t, t, output, prediction=prediction, clip_x0=clip_x0)
    # Alg. 2: z = 0 at the last step (t = 0 here, DDPM's t = 1).
    return mean + jnp.where(t > 0, sigma, 0.0).astype(x_t.dtype) * noise


def ddpm(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "eps",
    keep_every: int = 0,
    clip_x0: bool = True,
    variance: Literal["beta", "posterior", "learned_range"] = "beta",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """Ancestral sampling, DDPM (Ho et al. 2020) alg. 2, over all T steps.

    x_{t-1} = mu(x_t) + sigma_t z, z ~ N(0, I), and z = 0 at the last step. sigma_t^2 is
    beta_t (``variance="beta"``, the seed's ``denoise_add_noise``) or beta_tilde_t
    (``"posterior"``, DDPM sec. 3.2); the paper reports similar samples for both. With
    ``"learned_range"`` the model outputs 2C channels and sigma_t^2 is Improved DDPM's
    learned interpolation between the two (``learned_variance``, eq. 15).

    With ``clip_x0=False`` mu is eq. 11 from the predicted eps, exactly the seed's sampler.
    With ``clip_x0=True`` (default) x0_hat is clipped to [-1, 1] and mu is the posterior
    mean eq. 7 from it; without clipping the two are the same number, and clipping stops
    an over-confident early x0 estimate from pushing samples out of the data range.

    ``initial_noise`` replaces the x_T drawn from ``key`` (shape ``shape``).
    """
    return _ddpm(
        denoise_fn,
        schedule,
        key,
        shape,
        cond=cond,
        prediction=prediction,
        keep_every=keep_every,
        clip_x0=clip_x0,
        variance=variance,
        initial_noise=initial_noise,
        mesh=mesh,
        add_noise=True,
    )


def ddpm_no_noise(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "eps",
    keep_every: int = 0,
    clip_x0: bool = True,
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """DDPM without the added noise: a teaching aid (the seed's ``sample_ddpm_incorrect``).

    Each step returns mu(x_t) = E[x_{t-1} | x_t], the *mean* of the reverse step instead of
    a sample from it. A mean has less spread than the distribution it summarises, and the
    noise z is what puts the missing variance back; without it the shrinkage compounds over
    T steps and every sample collapses toward the average image (blurry blobs). For data
    N(0, I) the step is mu = sqrt(alpha_t) x_t, so the output is sqrt(alpha_bar_{T-1}) x_T:
    variance ~4e-5 for the linear T=1000 schedule, instead of 1. (DDIM with eta=0 is also
    deterministic but does not collapse: eq. 12 keeps the full sqrt(1 - ab_{t-1}) eps term.)

    Same arguments as ``ddpm``; ``key`` only draws x_T.
    """
    return _ddpm(
        denoise_fn,
        schedule,
        key,
        shape,
        cond=cond,
        prediction=prediction,
        keep_every=keep_every,
        clip_x0=clip_x0,
        variance="beta",
        initial_noise=initial_noise,
        mesh=mesh,
        add_noise=False,
    )


def _ddpm(
    denoise_fn,
    schedule,
    key,
    shape,
    *,
    cond,
    prediction,
    keep_every,
    clip_x0,
    variance,
    initial_noise,
    mesh,
    add_noise,
) -> Result:
    schedules.check_prediction(prediction)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    init_key, step_key = jax.random.split(key)
    x_init = initial(init_key, shape, initial_noise)
    T = schedule.num_timesteps

    def step(x, t):
        output = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32), cond)
        if not add_noise:
            if variance == "learned_range":
                output = split_learned(output)[0]
            return ddpm_mean(schedule, x, t, output, prediction=prediction, clip_x0=clip_x0)
        return ddpm_step(schedule, x, t, output, step_noise(step_key, t, x),
                         prediction=prediction, clip_x0=clip_x0, variance=variance)

    timesteps = jnp.arange(T - 1, -1, -1, dtype=jnp.int32)
    return scan(step, x_init, timesteps, num_steps=T, keep_every=keep_every, mesh=mesh)
