"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): a multistep solver of the probability-flow ODE in data-prediction
form, the strongest training-free few-step sampler next to DDIM.

Same contract as the other samplers of ``jaxdiff.samplers`` (and exported there):
``dpm_solver_pp(denoise_fn, schedule, key, shape, *, ...) -> (samples, trajectory)``, one
``lax.scan``, the batch sharding-constrained over ``mesh``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdiff import schedules
from jaxdiff.samplers._core import DenoiseFn, Result, alpha_bar_at, initial, scan
from jaxdiff.samplers.grids import Spacing, timestep_grid
from jaxdiff.schedules import Schedule


def dpm_solver_pp(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "eps",
    keep_every: int = 0,
    num_steps: int = 20,
    order: int = 2,
    clip_x0: bool = True,
    spacing: Spacing = "trailing",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """DPM-Solver++(2M), Lu et al. 2022, alg. 2, on ``samplers.timestep_grid``'s steps.

    With alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t),
    h_i = lambda_{t_i} - lambda_{t_{i-1}} and x0_i the data prediction at t_{i-1}:

        x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},   r_i = h_{i-1} / h_i,

    and D_1 = x0_1 at the first step (alg. 2's first-order start). The step to the clean
    image (sigma = 0, h = inf) is first order, D = x0, as diffusers' ``lower_order_final``
    does; there the update is x = x0. ``order=1`` uses D_i = x0_i throughout: DPM-Solver++1,
    which is DDIM with eta = 0 (Lu et al. sec. 4.1; the tests check it). ``clip_x0`` clips
    every x0 prediction to [-1, 1] (the ``ddim`` default), before it enters D.

    e^{-h} is written as alpha_{t_{i-1}} sigma_{t_i} / (sigma_{t_{i-1}} alpha_{t_i}), so the
    final step needs no infinite lambda. Any model ``prediction`` is turned into x0 by
    ``schedules.to_x0_eps``. ``key`` only draws x_T (the solver is deterministic). The
    default "trailing" grid starts at T-1 and leaves the last, tiny step to the clean image
    out of the multistep chain (diffusers' DPMSolverMultistepScheduler spaces steps alike).
    """
    schedules.check_prediction(prediction)
    if order not in (1, 2):
        raise ValueError(f"dpm_solver_pp order must be 1 or 2, got {order}")
    ts, ts_next = timestep_grid(schedule.num_timesteps, num_steps, spacing)
    x_init = initial(jax.random.split(key)[0], shape, initial_noise)

    # Per-step coefficients from the tables (traced when the schedule is a jit argument).
    ab, ab_next = alpha_bar_at(schedule, ts), alpha_bar_at(schedule, ts_next)
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    alpha_next, sigma_next = jnp.sqrt(ab_next), jnp.sqrt(1.0 - ab_next)
    # h_i is finite except for a step that ends on the clean image; r_i is only used for
    # second-order steps, which start after a finite step and end before the clean image.
    finite = ts_next >= 0
    lam = 0.5 * jnp.log(ab / (1.0 - ab))
    lam_next = 0.5 * jnp.log(jnp.where(finite, ab_next, 0.5) / jnp.where(finite, 1 - ab_next, 0.5))
    h = lam_next - lam
    h_before = jnp.concatenate([h[:1], h[:-1]])
    second = jnp.asarray((order == 2) & (np.arange(len(ts)) > 0) & finite)
    half_over_r = jnp.where(second, 0.5 * h / h_before, 0.0)
    coefs = (jnp.asarray(ts), alpha, sigma, alpha_next, sigma_next, half_over_r)

    def step(x, x0_before, inputs):
        t, a, s, a_next, s_next, c = inputs
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = schedules.to_x0_eps(
            schedule, x, t_batch, denoise_fn(x, t_batch, cond), prediction
        )
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
        d = (1.0 + c) * x0 - c * x0_before
        # sigma'/sigma x - alpha' (e^{-h} - 1) D  ==  sigma'/sigma (x - alpha D) + alpha' D.
        ratio = (s_next / s).astype(x.dtype)
        x_next = ratio * (x - a.astype(x.dtype) * d) + a_next.astype(x.dtype) * d
        return x_next, x0

    return scan(
        step,
        x_init,
        coefs,
        num_steps=len(ts),
        keep_every=keep_every,
        mesh=mesh,
        aux_init=jnp.zeros_like(x_init),
    )
