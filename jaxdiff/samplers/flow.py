"""Flow-matching ODE samplers: Euler and Heun over a (shifted) time grid from t = 1 (noise)
to t = 0 (data), for models trained with ``jaxdiff.flow_matching`` (x_t = (1 - t) x0 + t eps,
velocity eps - x0).

Model contract: ``denoise_fn(x_t, 1000 t, cond) -> velocity``, with a float32 (B,) time
(the diffusers convention ``timestep = sigma * num_train_timesteps``).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdiff.flow_matching import TIME_SCALE
from jaxdiff.samplers._core import DenoiseFn, Result, initial, scan

FlowGrid = Literal["uniform", "diffusers"]
FLOW_GRIDS = ("uniform", "diffusers")


def shift_time(t: np.ndarray, shift: float) -> np.ndarray:
    """SD3's resolution shift (Esser et al. 2024, sec. 5.3.2, eq. 23): t' = s t / (1 + (s - 1)
    t); s > 1 spends more of the steps at high noise. s = 1 is the identity."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_grid(
    num_steps: int, *, shift: float = 1.0, grid: FlowGrid = "uniform",
    num_train_timesteps: int = 1000,
) -> np.ndarray:
    """The float32 times (num_steps + 1,) a flow sampler visits, from t_0 = 1 down to t_N = 0.

    * "uniform": ``shift_time(linspace(1, 0, N + 1), shift)`` (SD3's sampling grid).
    * "diffusers": the grid of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)
      .set_timesteps(N)``: linspace(1, shift_time(1 / T), N) shifted again (the scheduler
      shifts its training sigma_min and then the whole grid), with 0 appended, T =
      ``num_train_timesteps``. Its last model step is at t > 0; "uniform" is the grid to
      train against. Built at trace time (static).
    """
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if float(shift) <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if grid == "uniform":
        return shift_time(np.linspace(1.0, 0.0, n + 1), shift).astype(np.float32)
    if grid == "diffusers":
        train_t = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)
        t_min = np.float32(shift_time(train_t[0] / num_train_timesteps, shift))
        t_max = np.float32(shift_time(np.float32(1.0), shift))
        ts = np.linspace(t_max * num_train_timesteps, t_min * num_train_timesteps, n,
                         dtype=np.float32) / num_train_timesteps
        return np.append(shift_time(ts, shift), 0.0).astype(np.float32)
    raise ValueError(f"grid must be one of {FLOW_GRIDS}, got {grid!r}")


def flow_euler(
    denoise_fn: DenoiseFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    num_steps: int = 50,
    shift: float = 1.0,
    grid: FlowGrid = "uniform",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
    keep_every: int = 0,
) -> Result:
    """Euler on dx/dt = v(x, t) (Liu et al. 2022, "Flow Straight and Fast", eq. 1; the step of
    diffusers' ``FlowMatchEulerDiscreteScheduler``): x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i,
    t_i) over ``flow_grid(num_steps, shift=shift, grid=grid)``, from x_0 = N(0, I) noise
    (``initial_noise`` when given). One model evaluation per step."""
    ts = flow_grid(num_steps, shift=shift, grid=grid)
    x_init = initial(key, shape, initial_noise)

    def step(x, t_pair):
        t, t_next = t_pair
        return x + (t_next - t) * _velocity(denoise_fn, x, t, cond)

    xs = (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:]))
    return scan(step, x_init, xs, num_steps=int(num_steps), keep_every=keep_every, mesh=mesh)


def flow_heun(
    denoise_fn: DenoiseFn,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    num_steps: int = 25,
    shift: float = 1.0,
    grid: FlowGrid = "uniform",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
    keep_every: int = 0,
) -> Result:
    """Heun's 2nd-order method (the trapezoid rule of EDM alg. 1, lines 5-8) on dx/dt =
    v(x, t): x' = x_i + dt v(x_i, t_i), x_{i+1} = x_i + dt (v(x_i, t_i) + v(x', t_{i+1})) / 2,
    dt = t_{i+1} - t_i, over ``flow_grid``. The velocity is finite at t = 0, so every step,
    the last included, is a Heun step: 2 model evaluations per step."""
    ts = flow_grid(num_steps, shift=shift, grid=grid)
    x_init = initial(key, shape, initial_noise)

    def step(x, t_pair):
        t, t_next = t_pair
        v = _velocity(denoise_fn, x, t, cond)
        x_euler = x + (t_next - t) * v
        v_next = _velocity(denoise_fn, x_euler, t_next, cond)
        return x + (t_next - t) * 0.5 * (v + v_next)

    xs = (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:]))
    return scan(step, x_init, xs, num_steps=int(num_steps), keep_every=keep_every, mesh=mesh)


def _velocity(denoise_fn: DenoiseFn, x: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    time = jnp.full((x.shape[0],), TIME_SCALE, jnp.float32) * t
    return denoise_fn(x, time, cond).astype(x.dtype)
