"""Samplers: turn a denoise_fn into images, each one ``jax.lax.scan`` over the steps.

Every sampler has the signature

    sampler(denoise_fn, schedule, key, shape, *, cond=None, prediction=..., keep_every=0,
            mesh=None, ...) -> (samples, trajectory)

* ``denoise_fn(x_t, t, cond) -> output``: a closure over params; ``output`` is eps, x0 or v
  as ``prediction`` says (``schedules.to_x0_eps`` converts it).
* ``shape``: (B, H, W, C) of the samples; ``samples`` is float32 of that shape (not clipped;
  ``viz`` clips when it renders).
* ``trajectory``: None when ``keep_every == 0``; else (num_kept, *shape) holding x after
  every ``keep_every``-th step plus the final sample, num_kept = ceil(num_steps /
  keep_every). The initial noise is not a frame.
* ``mesh``: a ``jax.sharding.Mesh`` with axis 'data'; the batch axis of the noise, of x and of
  the trajectory is then sharding-constrained over it, so a jitted sampler runs data-parallel.

Randomness: ``key`` splits into one key for the initial noise x_T and one step key; the
noise added at timestep t is ``normal(fold_in(step_key, t))``. Folding in t (not the loop
index) gives DDPM and full-length DDIM the same noise stream, and the same seed the same
samples on 1 device or N.

Callers jit with params as an argument so they are not baked in as constants:
``jax.jit(lambda params, key: ddim(make_denoise(params), schedule, key, shape))``.

Layout: ``_core`` (the scan, initial noise, batch constraint, step noise, table lookups),
``grids`` (``timestep_grid``), and one module per sampler: ``ddpm`` (with the DDPM
single-step algebra), ``ddim`` (with ``ddim_step``), ``dpm_solver``, ``corruption``;
``flow`` (``flow_euler``, ``flow_heun``: ``flow_euler(denoise_fn, key, shape, *, ...)``, no
schedule, the model's output is a velocity) and ``edm_heun`` (its output is EDM's D(x;
sigma)), the continuous-time samplers. The public API is ``jaxdiff.samplers.<name>``.
"""

from jaxdiff.samplers import dpm_solver
from jaxdiff.samplers._core import DenoiseFn, Result, alpha_bar_at
from jaxdiff.samplers.corruption import corruption
from jaxdiff.samplers.ddim import ddim, ddim_step
from jaxdiff.samplers.ddpm import (
    ddpm,
    ddpm_no_noise,
    ddpm_step,
    eps_mean,
    posterior_mean,
    posterior_variance,
)
from jaxdiff.samplers.dpm_solver import dpm_solver_pp
from jaxdiff.samplers.edm_heun import edm_heun
from jaxdiff.samplers.flow import FLOW_GRIDS, flow_euler, flow_grid, flow_heun, shift_time
from jaxdiff.samplers.grids import SPACINGS, Spacing, timestep_grid
from jaxdiff.samplers.learned_variance import learned_range_log_variance, split_learned

__all__ = [
    "SPACINGS",
    "FLOW_GRIDS",
    "DenoiseFn",
    "Result",
    "Spacing",
    "alpha_bar_at",
    "corruption",
    "ddim",
    "ddim_step",
    "ddpm",
    "ddpm_no_noise",
    "ddpm_step",
    "dpm_solver",
    "dpm_solver_pp",
    "edm_heun",
    "flow_euler",
    "flow_grid",
    "flow_heun",
    "eps_mean",
    "learned_range_log_variance",
    "posterior_mean",
    "posterior_variance",
    "shift_time",
    "split_learned",
    "timestep_grid",
]
