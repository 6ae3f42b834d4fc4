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

DPM-Solver++ (``dpm_solver_pp``) lives in ``jaxdiff.dpm_solver`` and is importable from here.

Callers jit with params as an argument so they are not baked in as constants:
``jax.jit(lambda params, key: ddim(make_denoise(params), schedule, key, shape))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff import schedules
from jaxdiff.losses import CORRUPTION_TIMESTEPS
from jaxdiff.schedules import Schedule

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
Result = tuple[jax.Array, jax.Array | None]
Spacing = Literal["linspace", "trailing"]
SPACINGS = ("linspace", "trailing")


def timestep_grid(
    num_timesteps: int, num_steps: int, spacing: Spacing = "linspace"
) -> tuple[np.ndarray, np.ndarray]:
    """The (ts, ts_prev) int32 lists of a strided sampler: step i goes from ts[i] to ts_prev[i],
    and ts_prev = -1 after the last step means "to the clean image" (alpha_bar = 1).

    * "linspace": ts = round(linspace(T-1, 0, num_steps)), DDIM's even spacing that ends at 0.
    * "trailing": ts = round(arange(T, 0, -T/num_steps)) - 1 (Lin et al. 2024, "Common
      Diffusion Noise Schedules and Sample Steps are Flawed", table 2): starts at T-1, and
      when num_steps divides T the grids of N and 2N steps nest, as progressive
      distillation needs (Salimans & Ho 2022, alg. 2).

    Both are the full walk T-1, ..., 0 at num_steps = T. Built at trace time (static).
    """
    T, num_steps = int(num_timesteps), int(num_steps)
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be between 1 and the schedule's T={T}, got {num_steps}")
    if spacing == "linspace":
        ts = np.round(np.linspace(T - 1, 0, num_steps))
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps))[:num_steps] - 1
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = ts.astype(np.int32)
    return ts, np.append(ts[1:], -1).astype(np.int32)


def alpha_bar_at(schedule: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar_t, with alpha_bar = 1 at t = -1 (the clean image a grid ends on)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t >= 0, schedule.alpha_bars[jnp.maximum(t, 0)], 1.0)


# ---------------------------------------------------------------------------------------------
# Single-step algebra (DDPM). Public so tests and notebooks can check them against the paper.
# ---------------------------------------------------------------------------------------------


def eps_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """DDPM eq. 11: mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps).

    The mean of p(x_{t-1} | x_t) written with the predicted noise; the sprites seed's
    ``denoise_add_noise`` without its noise term. ``t`` is a scalar timestep index.
    """
    beta, alpha, ab = _tables(schedule, t, x_t.dtype)
    return (x_t - beta / jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(alpha)


def posterior_mean(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """DDPM eq. 7: mu_tilde = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0
    + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t, the mean of q(x_{t-1} | x_t, x0).

    Equal to ``eps_mean`` when x0 and eps are consistent with x_t (the tests check this);
    written with x0 so that a clipped x0 can be used. ``t`` is a scalar timestep index.
    """
    beta, alpha, ab = _tables(schedule, t, x_t.dtype)
    ab_prev = _alpha_bar_prev(schedule, t, x_t.dtype)
    # 1 - ab_t written as (1 - ab_prev) + ab_prev beta_t: the same number, but exactly beta_0
    # at the last step, so the final mean is exactly x0 instead of x0 * (1 +- 2e-4) from
    # float32 rounding in 1 - alpha_bar.
    one_minus_ab = (1.0 - ab_prev) + ab_prev * beta
    return (jnp.sqrt(ab_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - ab_prev) * x_t) / one_minus_ab


def posterior_variance(schedule: Schedule, t: jax.Array) -> jax.Array:
    """DDPM sec. 3.2: beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t (0 at the last step)."""
    beta, _, _ = _tables(schedule, t, jnp.float32)
    ab_prev = _alpha_bar_prev(schedule, t, jnp.float32)
    return (1.0 - ab_prev) * beta / ((1.0 - ab_prev) + ab_prev * beta)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


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
    variance: Literal["beta", "posterior"] = "beta",
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """Ancestral sampling, DDPM (Ho et al. 2020) alg. 2, over all T steps.

    x_{t-1} = mu(x_t) + sigma_t z, z ~ N(0, I), and z = 0 at the last step. sigma_t^2 is
    beta_t (``variance="beta"``, the seed's ``denoise_add_noise``) or beta_tilde_t
    (``"posterior"``, DDPM sec. 3.2); the paper reports similar samples for both.

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
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    init_key, step_key = jax.random.split(key)
    x_init = _initial(init_key, shape, initial_noise)
    T = schedule.num_timesteps

    def step(x, t):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, eps = schedules.to_x0_eps(
            schedule, x, t_batch, denoise_fn(x, t_batch, cond), prediction
        )
        if clip_x0:
            mean = posterior_mean(schedule, x, t, jnp.clip(x0, -1.0, 1.0))
        else:
            mean = eps_mean(schedule, x, t, eps)
        if not add_noise:
            return mean
        var = schedule.betas[t] if variance == "beta" else posterior_variance(schedule, t)
        # Alg. 2: z = 0 at the last step (t = 0 here, DDPM's t = 1).
        sigma = jnp.where(t > 0, jnp.sqrt(var), 0.0).astype(x.dtype)
        return mean + sigma * _step_noise(step_key, t, x)

    timesteps = jnp.arange(T - 1, -1, -1, dtype=jnp.int32)
    return _scan(step, x_init, timesteps, num_steps=T, keep_every=keep_every, mesh=mesh)


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
    x_init = _initial(init_key, shape, initial_noise)

    def step(x, ts_pair):
        t, t_prev = ts_pair
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, eps = schedules.to_x0_eps(
            schedule, x, t_batch, denoise_fn(x, t_batch, cond), prediction
        )
        ab = schedule.alpha_bars[t].astype(x.dtype)
        ab_prev = alpha_bar_at(schedule, t_prev).astype(x.dtype)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        # eta > 1 would make the eps coefficient imaginary; clamp it at 0.
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0))
        x_prev = jnp.sqrt(ab_prev) * x0 + direction * eps
        if static_eta and eta == 0:  # static: skip drawing noise that would be multiplied by 0
            return x_prev
        return x_prev + sigma * _step_noise(step_key, t, x)

    xs = (jnp.asarray(ts), jnp.asarray(ts_prev))
    return _scan(step, x_init, xs, num_steps=num_steps, keep_every=keep_every, mesh=mesh)


def corruption(
    denoise_fn: DenoiseFn,
    schedule: Schedule | None,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "x0",
    keep_every: int = 0,
    num_steps: int = 5,
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """The naive sampler of the corruption baseline (HF diffusion course, unit 1, "Diffusion
    from scratch"): start from uniform noise on [-1, 1], then for i in range(num_steps):
    pred = model(x); mix = 1 / (num_steps - i); x = x (1 - mix) + pred mix.

    The baseline model predicts the clean image directly, so ``prediction`` must be "x0".
    Had pred been exact, the input of step i is corrupted by amount (num_steps - i) /
    num_steps; t passes that amount on the 1000-step scale that
    ``losses.make_corruption_loss`` trains with (BasicUNet, like the course's ``net(x)``,
    ignores t). ``schedule`` is unused (None is fine). The last step has mix = 1: x = pred.
    """
    if prediction != "x0":
        raise ValueError(
            f"the corruption sampler needs a model that predicts the clean image "
            f"(prediction='x0'), got prediction={prediction!r}"
        )
    if int(num_steps) < 1:
        raise ValueError(f"corruption num_steps must be >= 1, got {num_steps}")
    num_steps = int(num_steps)
    if initial_noise is None:
        x_init = jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
    else:
        x_init = _initial(key, shape, initial_noise)

    def step(x, mix_and_t):
        mix, t = mix_and_t
        pred = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32), cond)
        return x * (1.0 - mix) + pred * mix

    remaining = num_steps - np.arange(num_steps)  # num_steps, ..., 1
    mixes = jnp.asarray(1.0 / remaining, jnp.float32)
    ts = jnp.asarray(np.round(remaining / num_steps * (CORRUPTION_TIMESTEPS - 1)), jnp.int32)
    return _scan(step, x_init, (mixes, ts), num_steps=num_steps, keep_every=keep_every, mesh=mesh)


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------


def _scan(
    step, x_init, xs, *, num_steps: int, keep_every: int, mesh: Mesh | None, aux_init=None
) -> Result:
    """Runs ``x = step(x, xs[i])`` for i < num_steps as ONE lax.scan, keeping a trajectory.

    With ``aux_init`` (a batch-first array a multistep solver carries, e.g. the previous
    model output) the step is ``(x, aux) = step(x, aux, xs[i])`` instead.

    The trajectory is a preallocated (num_kept, *shape) buffer in the carry rather than
    scan's stacked outputs, which would hold all num_steps frames (1000 x batch for DDPM).
    Every step writes x unconditionally at slot i // keep_every: later writes to the same
    slot overwrite earlier ones, so slot j ends up with x after step min((j+1) k, N) - 1,
    i.e. every k-th step plus the final sample, with no lax.cond in the loop.
    """
    if int(keep_every) != keep_every or keep_every < 0:
        raise ValueError(f"keep_every must be an int >= 0 (0 = no trajectory), got {keep_every}")
    keep_every = int(keep_every)
    constrain = _batch_constraint(mesh, batch_axis=0)
    x_init = constrain(x_init)
    buffer = None
    if keep_every:
        num_kept = -(-num_steps // keep_every)
        buffer = _batch_constraint(mesh, batch_axis=1)(
            jnp.zeros((num_kept, *x_init.shape), x_init.dtype)
        )

    def body(carry, inputs):
        x, aux, buffer = carry
        i, step_input = inputs
        if aux is None:
            x = step(x, step_input)
        else:
            x, aux = step(x, aux, step_input)
            aux = constrain(aux.astype(aux_init.dtype))
        x = constrain(x.astype(x_init.dtype))
        if buffer is not None:
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, x, i // keep_every, axis=0)
        return (x, aux, buffer), None

    aux_init = None if aux_init is None else constrain(aux_init)
    indices = jnp.arange(num_steps, dtype=jnp.int32)
    (x, _, buffer), _ = jax.lax.scan(body, (x_init, aux_init, buffer), (indices, xs))
    return x, buffer


def _batch_constraint(mesh: Mesh | None, *, batch_axis: int):
    if mesh is None:
        return lambda x: x
    spec = P(*([None] * batch_axis), "data")
    sharding = NamedSharding(mesh, spec)
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def _initial(key: jax.Array, shape: tuple[int, ...], initial_noise: jax.Array | None):
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(
            f"shape must be (B, ...) with a batch axis, e.g. (B, H, W, C); got {shape}"
        )
    if initial_noise is None:
        return jax.random.normal(key, shape, jnp.float32)
    if tuple(initial_noise.shape) != shape:
        raise ValueError(
            f"initial_noise has shape {tuple(initial_noise.shape)} but shape is {shape}"
        )
    return jnp.asarray(initial_noise, jnp.float32)


def _step_noise(step_key: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """z for timestep t: folded in by t, so every sampler visiting t draws the same z."""
    return jax.random.normal(jax.random.fold_in(step_key, t), x.shape, x.dtype)


def _tables(schedule: Schedule, t, dtype):
    return (
        schedule.betas[t].astype(dtype),
        schedule.alphas[t].astype(dtype),
        schedule.alpha_bars[t].astype(dtype),
    )


def _alpha_bar_prev(schedule: Schedule, t, dtype):
    """alpha_bar_{t-1}, with alpha_bar = 1 before the first step (t = 0)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t > 0, schedule.alpha_bars[jnp.maximum(t - 1, 0)], 1.0).astype(dtype)


def __getattr__(name: str):
    # dpm_solver.py builds on this module's machinery, so it is imported on first use here.
    if name == "dpm_solver_pp":
        from jaxdiff.dpm_solver import dpm_solver_pp

        return dpm_solver_pp
    raise AttributeError(f"module 'jaxdiff.samplers' has no attribute {name!r}")
