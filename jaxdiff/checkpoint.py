"""Orbax checkpoints of a training run: TrainState, data-iterator position and config.

A checkpoint is one step directory under ``<workdir>/checkpoints`` with three items:

* ``state``   the TrainState pytree (step, params, optimizer state with the EMA params, rng);
* ``data``    the grain iterator's position (grain registers an orbax handler for it), so a
              resumed run sees exactly the batches an uninterrupted run would have seen;
* ``config``  the run's config as JSON, used to say which fields differ when a workdir's
              checkpoint does not fit the current config.

Orbax writes each step into a temporary directory and renames it only once every item is
on disk, so a save interrupted by SIGKILL or a full disk leaves a ``*.orbax-checkpoint-tmp*``
directory that ``latest_step`` never reports. Once a step is on disk a checksum manifest is
written into it (``jaxdiff.integrity``); ``restore`` verifies it and, when the newest step is
damaged or unreadable, says so in one line and falls back to the newest intact one (at least
two steps are kept for that reason).

Topology-free: arrays are restored onto the shardings of the target's leaves (any mesh, any
number of processes), or replicated over ``jax.devices()`` for a target without shardings, so
a run saved on 4 devices or by 2 processes restores on 1 device and vice versa. Saving and
restoring are collective: every process calls them.
"""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff import distributed, held_output, integrity

STATE, DATA, CONFIG = "state", "data", "config"
# A leaf of ``restore``'s ``state`` left on disk (orbax's placeholder): it comes back as SKIP.
SKIP = ocp.PLACEHOLDER


class CheckpointMismatchError(ValueError):
    """A workdir's checkpoint does not fit the model/optimizer built from the current config."""


class CheckpointDamagedError(ValueError):
    """No checkpoint in the workdir is intact (each one fails its checksums or its read)."""


class CheckpointSaveError(OSError):
    """A save failed (e.g. the disk is full); the checkpoints already on disk are intact."""


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def newest_step(workdir: str | pathlib.Path) -> int | None:
    """The newest finished step directory under ``<workdir>/checkpoints`` (orbax renames a
    step's temporary directory to its number once it is whole), read without starting a
    manager; None when there is none. ``restore`` may still fall back to an older step."""
    directory = checkpoint_dir(workdir)
    steps = [int(d.name) for d in directory.glob("*") if d.name.isdigit() and d.is_dir()]
    return max(steps, default=None)


def make_manager(
    workdir: str | pathlib.Path, *, keep: int = 3, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
    """A CheckpointManager over ``<workdir>/checkpoints`` that keeps the newest ``keep`` steps
    (at least 2, so that a damaged newest step has an intact one before it).

    ``async_save`` writes in a background thread, so training continues while the arrays go to
    disk; call ``manager.wait_until_finished()`` before the process exits.
    """
    options = ocp.CheckpointManagerOptions(
        # read_only: neither create the directory nor delete anything in it (sample.py).
        max_to_keep=None if read_only else max(int(keep), 2),
        create=not read_only,
        # Leftovers of saves killed half-way are never restored; removing them keeps the
        # directory readable for people.
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
    )
    # Handlers named up front: a fresh manager (a resumed run, sample.py) can then read an
    # item's metadata before anything was saved in this process.
    handlers = {
        # The PyTree handler (what the Standard one wraps, same files) restores a subset.
        STATE: ocp.PyTreeCheckpointHandler(),
        DATA: grain.checkpoint.CheckpointHandler(),
        CONFIG: ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def config_to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain JSON data (tuples become lists, references are resolved)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config), default=str))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    state: Any,
    config: ml_collections.ConfigDict | Mapping[str, Any],
    data_iterator: Any = None,
    wait: bool = False,
) -> None:
    """Saves ``state``, the iterator position and the config as checkpoint ``step``.

    The save is asynchronous unless ``wait``; the iterator state is read now, so the caller
    may keep drawing batches while the arrays are written.
    """
    items = {STATE: ocp.args.PyTreeSave(state), CONFIG: ocp.args.JsonSave(config_to_dict(config))}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
        with held_output.held_error_output() as held:
            # Steps an earlier async save left without a manifest get theirs first.
            write_manifests(manager)
            # force: the caller decides when to save (every checkpoint_every steps, SIGTERM).
            manager.save(int(step), args=ocp.args.Composite(**items), force=True)
            if wait:
                manager.wait_until_finished()
                write_manifests(manager)
    except Exception as error:  # orbax wraps the OSError of a full disk in its own errors
        if not _is_disk_full(error):
            held.release()
            raise
        # Orbax's threads leave futures whose errors asyncio would log at exit.
        held_output.quiet_asyncio()
        kept = [s for s in manager.all_steps() if s != int(step)]
        raise disk_full_error(
            f"saving the checkpoint of step {step} in {manager.directory}",
            newest=max(kept) if kept else None,
        ) from error
    held.release()


def disk_full_error(doing: str, *, newest: int | None) -> CheckpointSaveError:
    """The one-line report of a full disk: checkpoints are renamed into place only when
    whole, so the newest complete one is intact and a rerun resumes from it."""
    failed = CheckpointSaveError(
        f"disk full while {doing}; nothing was lost: the newest complete checkpoint "
        f"({'step ' + str(newest) if newest is not None else 'none yet'}) is intact. Free some "
        "space and run the same command again to resume from it"
    )
    failed.errno = errno.ENOSPC
    return failed


def write_manifests(manager: ocp.CheckpointManager) -> None:
    """Writes the checksum manifest of every finished step that lacks one (process 0 writes,
    the others wait for it)."""
    distributed.sync("jaxdiff_manifest_start")
    if distributed.is_main_process():
        for step in manager.all_steps():
            path = step_dir(manager, step)
            if path.is_dir() and not integrity.has_manifest(path):
                integrity.write_manifest(path)
    distributed.sync("jaxdiff_manifest_done")


def step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    return pathlib.Path(manager.directory) / str(int(step))


def _is_disk_full(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "RESOURCE_EXHAUSTED" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def saved_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
    """The config stored with checkpoint ``step`` (default: the newest complete one)."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {manager.directory}")
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[
        CONFIG
    ]


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields whose values differ, as ``'model.ch: 32 (saved) != 64'``."""
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(flat_saved) | set(flat_current)):
        a = flat_saved.get(key, "<absent>")
        b = flat_current.get(key, "<absent>")
        if a != b:
            lines.append(f"{key}: {a!r} (saved) != {b!r} (now)")
    return lines


def restore(
    manager: ocp.CheckpointManager,
    *,
    state: Any,
    config: ml_collections.ConfigDict | Mapping[str, Any],
    data_iterator: Any = None,
    step: int | None = None,
    set_aside_damaged: bool = False,
) -> tuple[Any, int] | None:
    """Restores the newest intact checkpoint (or ``step``) into the structure of ``state``.

    Each candidate, newest first, is checked against its checksum manifest and then read; a
    damaged or unreadable one is reported in one line on stderr and the next older one is
    tried.

    Args:
      state: a TrainState, or its ``jax.eval_shape``; gives the tree structure, shapes and
        dtypes to restore into, and the shardings where its leaves have them (else the
        arrays are replicated over ``jax.devices()``), whatever the mesh that saved it.
        Leaves that are ``SKIP`` are not read (they must exist in the checkpoint).
      config: the current config; compared with the saved one to explain a mismatch.
      data_iterator: a grain iterator whose position is set to the saved one (in place).
      set_aside_damaged: move damaged steps to ``<workdir>/damaged_checkpoints/`` (a
        training run, which will save those steps again; sampling leaves them).

    Returns:
      ``(state, step)``, or None when the workdir has no complete checkpoint.

    Raises:
      CheckpointMismatchError: the saved tree does not fit ``state`` (other model size,
        model, optimizer...); the message lists the config fields that differ.
      CheckpointDamagedError: no candidate checkpoint is intact.
    """
    candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not candidates:
        return None
    abstract = jax.tree.map(_restore_target(), state)
    problems = []
    for candidate in candidates:
        problem = integrity.verify(step_dir(manager, candidate))
        # Every process checks the shared files; process 0's verdict keeps them in step.
        if not distributed.agree(problem is not None):
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            items = {STATE: ocp.args.PyTreeRestore(abstract, restore_args=restore_args)}
            if data_iterator is not None:
                items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                check_fits(manager, candidate, state=state, config=config)
                restored = manager.restore(candidate, args=ocp.args.Composite(**items))
                return restored[STATE], candidate
            except CheckpointMismatchError:
                raise
            except Exception as error:  # noqa: BLE001 - any failed read: try an older step
                problem = "it cannot be read: " + " ".join(str(error).split())[:300]
        problem = problem or "damaged on process 0"
        problems.append(f"step {candidate}: {problem}")
        if distributed.is_main_process():
            print(
                f"warning: the checkpoint of step {candidate} in {manager.directory} is "
                f"damaged ({problem}); "
                + ("trying the one before it" if candidate != candidates[-1] else "none left"),
                file=sys.stderr,
            )
        if set_aside_damaged:
            _set_aside(manager, candidate)
    raise CheckpointDamagedError(
        f"no intact checkpoint in {manager.directory} ({'; '.join(problems)}); use a new "
        "--workdir, or restore the files from a copy"
    )


def _restore_target():
    """leaf -> ShapeDtypeStruct with the leaf's sharding, or replicated over all devices."""
    everywhere = NamedSharding(Mesh(jax.devices(), ("all",)), PartitionSpec())

    def target(x):
        if x is SKIP:
            return x
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or everywhere)

    return target


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    distributed.sync("jaxdiff_set_aside_start")
    if distributed.is_main_process():
        destination = pathlib.Path(manager.directory).parent / "damaged_checkpoints"
        destination.mkdir(exist_ok=True)
        target = destination / f"{step}.{int(time.time())}"
        shutil.move(str(step_dir(manager, step)), str(target))
        print(f"note: moved the damaged step {step} to {target}", file=sys.stderr)
    distributed.sync("jaxdiff_set_aside_done")
    manager.reload()


def check_fits(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    state: Any,
    config: ml_collections.ConfigDict | Mapping[str, Any],
) -> None:
    """Raises CheckpointMismatchError unless checkpoint ``step`` has ``state``'s leaves/shapes.

    Checked from the saved metadata before reading any array: a failed orbax restore would
    only say which array failed, not why, and would print tracebacks from its threads.
    """
    saved = ocp.tree.to_flat_dict(manager.item_metadata(step)[STATE])
    wanted = ocp.tree.to_flat_dict(jax.tree.map(_stored_shape, state))
    skipped = {k for k, v in wanted.items() if v is SKIP}
    problems = []
    # Params first: they name the layers a person recognises; optimizer slots repeat them.
    for key in sorted(set(saved) | set(wanted), key=lambda k: (k[0] != "params", str(k))):
        name = ".".join(str(k) for k in key)
        if key not in wanted:
            problems.append(f"{name} is in the checkpoint but not in the model")
        elif key not in saved:
            problems.append(f"{name} is in the model but not in the checkpoint")
        elif key not in skipped and tuple(saved[key].shape) != tuple(wanted[key].shape):
            problems.append(
                f"{name} has shape {tuple(saved[key].shape)} in the checkpoint, "
                f"{tuple(wanted[key].shape)} in the model"
            )
    if not problems:
        return
    diff = config_diff(saved_config(manager, step), config_to_dict(config))
    shown = "; ".join(problems[:3]) + (
        f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    )
    fields = (
        "config fields that differ from the saved run: " + "; ".join(diff)
        if diff
        else "no config field differs, so the code that builds the model changed"
    )
    raise CheckpointMismatchError(
        f"the checkpoint at step {step} in {manager.directory} does not fit this config "
        f"({shown}). {fields}. Use a new --workdir, or the saved config "
        f"(--config.<field>=<saved value>) to resume it."
    )


def _stored_shape(x: Any) -> jax.ShapeDtypeStruct:
    """The shape orbax stores for ``x``: a typed PRNG key is saved as its uint32 key data, so
    an abstract key (``jax.eval_shape``, shape ()) must compare as shape (2,)."""
    if x is SKIP:
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data, x)
    return ocp.utils.to_shape_dtype_struct(x)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
