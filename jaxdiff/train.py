"""The train step, its state, and the mesh/sharding helpers it runs under.

One jitted function does a whole step (loss, gradients, optimizer, EMA) over a
``jax.sharding.Mesh`` with a single 'data' axis: params and optimizer state are replicated,
the batch is split along its first axis, and XLA inserts the gradient all-reduce. The same
code runs on 1 CPU, N GPUs, a TPU slice or several hosts.

Randomness: the key of step s is ``fold_in(state.rng, s)``, drawn from inside the jitted
step over the global batch. A jitted program's values do not depend on its sharding, so the
same seed gives the same run on 1 device or N, up to float reduction order; with
``jax_threefry_partitionable`` (the default) each device draws its own shard of the noise
without communication.

Typical use::

    mesh = make_mesh()
    state = replicate(create_train_state(params, optimizer, jax.random.key(0)), mesh)
    step = make_train_step(loss_fn, optimizer, mesh)
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, mesh))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.losses import LossFn

Metrics = dict[str, jax.Array]
TrainStep = Callable[["TrainState", Any], tuple["TrainState", Metrics]]


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; a pytree (checkpointable with orbax).

    step: int32 scalar, updates attempted so far (skipped non-finite steps included).
    params: the model's inner params tree (what ``loss_fn`` takes).
    opt_state: the optimizer state (holds the EMA params, see ``jaxdiff.optim``).
    rng: the run's base PRNG key; never advanced, each step folds in its step number.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(
    params: Any, optimizer: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """A fresh state at step 0; ``rng`` is a PRNG key (``jax.random.key(seed)``)."""
    return TrainState(
        step=jnp.zeros([], jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng
    )


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: ``jax.devices()``, all devices of all
    processes) with one axis named ``axis_name``."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every axis of ``mesh``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local batch (a pytree of arrays, leading axis B_local) -> global jax.Arrays of
    leading size B_local * process_count, split over the mesh's devices.

    Each process passes its own slice of the global batch; with one process this is the
    whole batch. The local batch size must divide evenly over the local devices.
    """
    sharding = data_sharding(mesh)
    local_devices = len(mesh.local_devices)

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local_devices:
            raise ValueError(
                f"batch leaf of shape {x.shape} cannot be split over {local_devices} local "
                f"devices; use a per-process batch size divisible by {local_devices}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree (e.g. a TrainState) on every device of ``mesh``. With several processes
    every process must pass the same values."""
    return jax.device_put(tree, replicated_sharding(mesh))


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainStep:
    """Returns the jitted ``step(state, batch) -> (state, metrics)``.

    The state is donated: its buffers, including those of the params given to
    ``create_train_state``, are reused for the new state, so keep a copy
    (``jax.device_get``) of anything you need afterwards. The state is replicated over
    ``mesh``, the batch split along 'data' (``shard_batch``).

    A step whose loss or gradient norm is not finite changes neither params nor opt_state
    (so neither the EMA) but still advances ``step``, so the next step draws fresh noise;
    ``metrics['skipped']`` is 1 for it (sum it to count skips). The metrics report its
    loss as it was (NaN/inf), so a logged mean shows the problem too.

    Metrics (float32 scalars, replicated): the loss_fn's metrics, ``grad_norm`` (global norm
    before clipping), ``skipped``, and ``learning_rate`` (the lr of this update) when the
    optimizer state carries one (``jaxdiff.optim.make_optimizer`` does).
    """
    replicated = replicated_sharding(mesh)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = grad_fn(state.params, batch, key)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # A select rather than lax.cond: both branches are cheap next to the model, and a
        # select keeps one straight-line program for XLA to fuse.
        keep_if_finite = lambda new, old: jnp.where(finite, new, old)
        new_state = state.replace(
            step=state.step + 1,
            params=jax.tree.map(keep_if_finite, new_params, state.params),
            opt_state=jax.tree.map(keep_if_finite, new_opt_state, state.opt_state),
        )

        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = grad_norm
        metrics["skipped"] = jnp.logical_not(finite).astype(jnp.float32)
        lr = optax.tree_utils.tree_get(
            new_opt_state, "learning_rate", filtering=lambda _, v: isinstance(v, jax.Array)
        )
        if lr is not None:
            metrics["learning_rate"] = lr
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(replicated, data_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
