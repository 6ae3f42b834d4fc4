"""Several processes (hosts) as one run: ``jax.distributed`` setup and who writes what.

Each host runs the same command; ``initialize`` joins them (explicit coordinator address,
process count and index, or what ``jax.distributed.initialize()`` finds itself on SLURM, Open
MPI, TPU VMs or with ``JAX_COORDINATOR_ADDRESS``). Afterwards ``jax.devices()`` lists every
process's devices, one global ``Mesh`` spans them (``jaxdiff.train.make_mesh``), each process
feeds its slice of every global batch (``jaxdiff.data`` / ``jaxdiff.train.shard_batch``),
orbax saves and restores collectively, and only the main process (index 0) writes logs,
metrics and images (``is_main_process``). On CPU the processes talk through gloo
(``jax_cpu_collectives_implementation``, the default in jax 0.10).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process job that
    ``jax.distributed.initialize()`` can set up by itself (SLURM with several tasks, Open MPI,
    a multi-host TPU slice, or ``JAX_COORDINATOR_ADDRESS``)."""
    env = os.environ if environ is None else environ

    def more_than_one(name: str) -> bool:
        try:
            return int(env.get(name, "1")) > 1
        except ValueError:
            return False

    return bool(
        env.get("JAX_COORDINATOR_ADDRESS")
        or (env.get("SLURM_JOB_ID") and more_than_one("SLURM_NTASKS"))
        or more_than_one("OMPI_COMM_WORLD_SIZE")
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins this process to a multi-process run; returns whether it did.

    With ``coordinator_address`` ("host:port" of process 0), ``num_processes`` and
    ``process_id`` all given, calls ``jax.distributed.initialize`` with them; with none given,
    calls it without arguments when ``cluster_detected()``, else does nothing (one process).
    Must run before anything touches a device.

    Raises:
      ValueError: only some of the three are given, or they are inconsistent.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "give all of --coordinator_address (host:port of process 0), --num_processes and "
            "--process_id, or none of them"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
            )
        if ":" not in coordinator_address:
            raise ValueError(
                f"--coordinator_address={coordinator_address!r} must be host:port, e.g. "
                "localhost:12355"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    if cluster_detected():
        jax.distributed.initialize()
        return True
    return False


def is_main_process() -> bool:
    """True in the one process (index 0) that writes logs, metrics, images and progress."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(value: Any) -> Any:
    """Process 0's ``value`` (a number, bool or numpy array) in every process, so that all of
    them take the same branch (stop, skip a checkpoint...)."""
    if jax.process_count() == 1:
        return value
    out = multihost_utils.broadcast_one_to_all(np.asarray(value))
    return out.item() if np.ndim(out) == 0 else out
