"""DDIM (Song et al. 2021): the eq. 12 step, shared with progressive distillation, and the
sampler over a strided ``timestep_grid``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxdiff import schedules
from jaxdiff.samplers._core import DenoiseFn, Result, alpha_bar_at, initial, scan, step_noise
from jaxdiff.samplers.grids import Spacing, timestep_grid
from jaxdiff.schedules import Schedule


def ddim_step(
    *,
    x_t: jax.Array,
    x0: jax.Array,
    alpha_bar: jax.Array,
    alpha_bar_prev: jax.Array,
    eps: jax.Array | None = None,
    sigma: jax.Array | float = 0.0,
) -> jax.Array:
    """DDIM, Song et al. 2021, eq. 12 without its noise term, from alpha_bar_t to
    alpha_bar_prev given the x0 prediction:

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps.

    ``eps`` defaults to the noise consistent with x_t and x0, (x_t - sqrt(ab_t) x0) /
    sqrt(1 - ab_t); with it and sigma = 0 the step is z_s = alpha_s x0 + sigma_s / sigma_t
    (z_t - alpha_t x0), Salimans & Ho 2022 alg. 2's update. ab_prev = 1 (the clean image)
    gives x0. The alpha_bars are scalars or broadcast against x_t (``schedules.per_example``);
    the caller adds sigma z.
    """
    if eps is None:
        eps = (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)
    # eta > 1 would make the eps coefficient imaginary; clamp it at 0.
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0))
    return jnp.sqrt(alpha_bar_prev) * x0 + direction * eps


def ddim(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "eps",
    keep_every: int = 0,
    num_steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    spacing: Spacing = "linspace",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """DDIM, Song et al. 2021, eq. 12 with sigma from eq. 16 scaled by ``eta``:

    x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev),

    over ``num_steps`` timesteps (default all T) of ``timestep_grid``: evenly spaced from T-1
    down to 0 ("linspace"), or down to T/num_steps - 1 ("trailing", the grid of progressive
    distillation); "prev" is the next timestep in that list (ab_prev = 1 after the last).
    eta = 0 is deterministic given x_T; eta = 1 with num_steps = T is DDPM with posterior
    variance, on the same noise stream as ``ddpm``. With ``clip_x0`` the eps used in eq. 12
    is recomputed from the clipped x0, so the step stays consistent with x_t (as diffusers).
    """
    schedules.check_prediction(prediction)
    T = schedule.num_timesteps
    num_steps = T if num_steps is None else int(num_steps)
    static_eta = isinstance(eta, (int, float))  # a traced eta (e.g. a sweep) is allowed too
    if static_eta and eta < 0:
        raise ValueError(f"ddim eta must be >= 0 (0 deterministic, 1 DDPM-like), got {eta}")
    ts, ts_prev = timestep_grid(T, num_steps, spacing)
    init_key, step_key = jax.random.split(key)
    x_init = initial(init_key, shape, initial_noise)

    def step(x, ts_pair):
        t, t_prev = ts_pair
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, eps = schedules.to_x0_eps(
            schedule, x, t_batch, denoise_fn(x, t_batch, cond), prediction
        )
        ab = schedule.alpha_bars[t].astype(x.dtype)
        ab_prev = alpha_bar_at(schedule, t_prev).astype(x.dtype)
        if clip_x0:
            # eps recomputed from the clipped x0 (ddim_step's default).
            x0, eps = jnp.clip(x0, -1.0, 1.0), None
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        x_prev = ddim_step(x_t=x, x0=x0, alpha_bar=ab, alpha_bar_prev=ab_prev, eps=eps, sigma=sigma)
        if static_eta and eta == 0:  # static: skip drawing noise that would be multiplied by 0
            return x_prev
        return x_prev + sigma * step_noise(step_key, t, x)

    xs = (jnp.asarray(ts), jnp.asarray(ts_prev))
    return scan(step, x_init, xs, num_steps=num_steps, keep_every=keep_every, mesh=mesh)
