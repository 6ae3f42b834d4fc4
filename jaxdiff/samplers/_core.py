"""What every sampler shares: the one ``lax.scan`` with its trajectory buffer, the initial
noise x_T, the batch sharding constraint, the per-timestep noise and the table lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.schedules import Schedule

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
Result = tuple[jax.Array, jax.Array | None]


def scan(
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
    constrain = batch_constraint(mesh, batch_axis=0)
    x_init = constrain(x_init)
    buffer = None
    if keep_every:
        num_kept = -(-num_steps // keep_every)
        buffer = batch_constraint(mesh, batch_axis=1)(
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


def batch_constraint(mesh: Mesh | None, *, batch_axis: int):
    """A function that sharding-constrains an array's ``batch_axis`` over every axis of the
    mesh, whatever their names (the identity without a mesh): the train step's batch layout
    (``jaxdiff.train.data_sharding``), so on a ('data', 'fsdp') mesh each device samples its
    own 1 / mesh.size of the batch."""
    if mesh is None:
        return lambda x: x
    axes = mesh.axis_names[0] if len(mesh.axis_names) == 1 else tuple(mesh.axis_names)
    spec = P(*([None] * batch_axis), axes)
    sharding = NamedSharding(mesh, spec)
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)


def initial(key: jax.Array, shape: tuple[int, ...], initial_noise: jax.Array | None):
    """x_T: ``initial_noise`` when given (checked against ``shape``), else N(0, I) from key."""
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


def step_noise(step_key: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """z for timestep t: folded in by t, so every sampler visiting t draws the same z."""
    return jax.random.normal(jax.random.fold_in(step_key, t), x.shape, x.dtype)


def tables(schedule: Schedule, t, dtype):
    """(beta_t, alpha_t, alpha_bar_t) in ``dtype``."""
    return (
        schedule.betas[t].astype(dtype),
        schedule.alphas[t].astype(dtype),
        schedule.alpha_bars[t].astype(dtype),
    )


def alpha_bar_prev(schedule: Schedule, t, dtype):
    """alpha_bar_{t-1}, with alpha_bar = 1 before the first step (t = 0)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t > 0, schedule.alpha_bars[jnp.maximum(t - 1, 0)], 1.0).astype(dtype)


def alpha_bar_at(schedule: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar_t, with alpha_bar = 1 at t = -1 (the clean image a grid ends on)."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t >= 0, schedule.alpha_bars[jnp.maximum(t, 0)], 1.0)
