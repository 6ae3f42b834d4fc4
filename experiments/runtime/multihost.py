"""The CLIs' multi-process flags: one process per host, joined by ``jax.distributed``.

    # on host 0 (or twice on one machine, once with --process_id=1):
    python -m experiments.train --config configs/digits.py --workdir runs/digits \\
        --coordinator_address=host0:12355 --num_processes=2 --process_id=0

Without the flags, ``jax.distributed.initialize()`` still runs where the environment
describes a cluster (SLURM, Open MPI, TPU VMs, ``JAX_COORDINATOR_ADDRESS``); see
``jaxdiff.distributed``.
"""

from __future__ import annotations

from absl import flags

from experiments.runtime.flag_defs import define
from jaxdiff import distributed


def define_flags() -> None:
    define(flags.DEFINE_string, "coordinator_address", None,
           "host:port of process 0, for a run over several processes.")
    define(flags.DEFINE_integer, "num_processes", None, "How many processes take part in the run.")
    define(flags.DEFINE_integer, "process_id", None,
           "This process's index in [0, num_processes).")


def initialize_from_flags() -> None:
    """``jaxdiff.distributed.initialize`` with the flags (ValueError on a bad combination)."""
    f = flags.FLAGS
    distributed.initialize(
        coordinator_address=f.coordinator_address,
        num_processes=f.num_processes,
        process_id=f.process_id,
    )
