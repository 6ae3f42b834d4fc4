"""The train step, its state, and the mesh/sharding helpers it runs under.

One jitted function does a whole step (loss, gradients, optimizer, EMA) over a
``jax.sharding.Mesh``: with a single 'data' axis params and optimizer state are replicated,
the batch is split along its first axis, and XLA inserts the gradient all-reduce; with
('data', 'fsdp') axes params, optimizer state and EMA are split along 'fsdp'
(``state_shardings``). The same code runs on 1 CPU, N GPUs, a TPU slice or several hosts
(one global mesh over every process's devices; ``jaxdiff.distributed``).

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

from jaxdiff import xla_options
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


def make_mesh(
    devices: Sequence[jax.Device] | None = None, axis_name: str = "data", *, fsdp: int = 1
) -> Mesh:
    """A mesh over ``devices`` (default: ``jax.devices()``, all devices of all processes).

    ``fsdp`` 1: one axis named ``axis_name`` (pure data parallel). ``fsdp`` K > 1: axes
    ('data', 'fsdp') of shape (N / K, K), the layout ``state_shardings`` shards parameters
    over (Rajbhandari et al. 2020, ZeRO stage 3; PyTorch's FSDP). ``jax.devices()`` lists
    each process's devices together, so every process's devices are one contiguous run of
    the flattened mesh, which is what ``shard_batch`` needs.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(
            f"mesh.fsdp={fsdp} must be a positive divisor of the number of devices "
            f"{len(devices)}"
        )
    if fsdp == 1:
        return Mesh(np.asarray(devices), (axis_name,))
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), ("data", "fsdp"))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every axis of ``mesh``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """Per-leaf shardings of a state (arrays or ``jax.eval_shape`` structs) over ``mesh``.

    Without an 'fsdp' axis (or with one of size 1) everything is replicated. With one of size
    K, each array is split along its largest axis that K divides (ties: the last such axis,
    e.g. the output features of a square kernel) and replicated over 'data'; scalars and
    arrays with no such axis are replicated. Params, Adam moments and EMA params share their
    shapes, so they share their shardings too: each device holds about 1/K of the state.
    """
    replicated = replicated_sharding(mesh)
    k = dict(mesh.shape).get("fsdp", 1)
    if k == 1:
        return jax.tree.map(lambda _: replicated, tree)

    def shard(x):
        axes = [a for a in range(len(x.shape)) if x.shape[a] % k == 0 and x.shape[a] >= k]
        if not axes:
            return replicated
        axis = max(axes, key=lambda a: (x.shape[a], a))
        spec = [None] * len(x.shape)
        spec[axis] = "fsdp"
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(shard, tree)


def bytes_per_device(tree: Any, shardings: Any) -> dict[Any, int]:
    """{device: bytes of ``tree``'s leaves (arrays or ShapeDtypeStructs) stored there} under
    ``shardings``, computed from shapes alone (works on ``jax.eval_shape`` output)."""
    totals: dict[Any, int] = {}
    for x, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=False):
        itemsize = np.dtype(x.dtype).itemsize if not jax.dtypes.issubdtype(
            x.dtype, jax.dtypes.prng_key) else 8
        shard = sharding.shard_shape(tuple(x.shape))
        for device in sharding.device_set:
            totals[device] = totals.get(device, 0) + int(np.prod(shard, dtype=np.int64)) * itemsize
    return totals


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local batch (a pytree of arrays, leading axis B_local) -> global jax.Arrays of
    leading size B_local * process_count, split over the mesh's devices.

    Each process passes its own contiguous slice of the global batch (process i: rows
    [i B_local, (i + 1) B_local), as ``jaxdiff.data.make_pipeline`` yields them); with one
    process this is the whole batch. The local batch size must divide evenly over the local
    devices.
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


def put_global(tree: Any, shardings: Any) -> Any:
    """Puts a pytree of host or single-device values onto global shardings (e.g. those of
    ``state_shardings``), each process filling only the shards of its own devices.

    ``jax.device_put`` would try to write to other processes' devices. Every process must
    pass the same values. PRNG key arrays travel as their key data.
    """

    def put(x, sharding):
        if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree (e.g. a TrainState) on every device of ``mesh``, on any number of
    processes (every process must pass the same values)."""
    replicated = replicated_sharding(mesh)
    return put_global(tree, jax.tree.map(lambda _: replicated, tree))


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    state_sharding: Any = None,
    compiler_options: dict[str, str] | None = None,
) -> TrainStep:
    """Returns the jitted ``step(state, batch) -> (state, metrics)``.

    The state is donated: its buffers, including those of the params given to
    ``create_train_state``, are reused for the new state, so keep a copy
    (``jax.device_get``) of anything you need afterwards. The state has ``state_sharding``
    (default: replicated over ``mesh``; FSDP: ``state_shardings(state, mesh)``), the batch is
    split along every mesh axis (``shard_batch``). XLA inserts the gradient all-reduce, or
    with FSDP the all-gathers of params and reduce-scatters of gradients; the values do not
    depend on the sharding.

    A step whose loss or gradient norm is not finite changes neither params nor opt_state
    (so neither the EMA) but still advances ``step``, so the next step draws fresh noise;
    ``metrics['skipped']`` is 1 for it (sum it to count skips). The metrics report its
    loss as it was (NaN/inf), so a logged mean shows the problem too.

    Metrics (float32 scalars, replicated): the loss_fn's metrics, ``grad_norm`` (global norm
    before clipping), ``skipped``, and ``learning_rate`` (the lr of this update) when the
    optimizer state carries one (``jaxdiff.optim.make_optimizer`` does).

    ``compiler_options``: XLA options of the compile (default
    ``jaxdiff.xla_options.compiler_options()``, the faster CPU settings; ``{}``: XLA's own).
    """
    replicated = replicated_sharding(mesh)
    state_sharding = replicated if state_sharding is None else state_sharding
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
        in_shardings=(state_sharding, data_sharding(mesh)),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
        compiler_options=xla_options.resolve(compiler_options) or None,
    )
