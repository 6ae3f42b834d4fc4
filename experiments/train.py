"""Trains a diffusion model from a config; resumes from the workdir's newest checkpoint.

    python -m experiments.train --config configs/digits.py --workdir runs/digits
    python -m experiments.train --config configs/mnist.py --workdir runs/mnist \\
        --config.train.steps=2000 --config.data.batch_size=64

Writes to the workdir: ``checkpoints/`` (orbax; the last ``train.keep_checkpoints``),
``metrics.jsonl`` (one JSON line every ``train.log_every`` steps), ``tensorboard/`` (event
files), ``samples/step_<N>.png`` (EMA-params previews every ``train.sample_every`` steps and
at the last step; one row per class with CFG) and ``config.json``. SIGTERM or Ctrl-C saves a
checkpoint and exits (status 128 + signal); running the same command again continues where
it stopped. On CPU, a run expected to take more than an hour says so after a few steps.
"""

from __future__ import annotations

import errno
import os
import sys

from absl import flags

from experiments.runtime import errors
from experiments.runtime.flag_defs import define

# Module level imports nothing that registers flags (jaxdiff, orbax, grain, absl.logging,
# ml_collections.config_flags do): define_flags() and main() import what they use.


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that every CLI module can be
    imported in one process (tests, notebooks)."""
    from ml_collections import config_flags

    from experiments.runtime import multihost

    define(config_flags.DEFINE_config_file, "config", None,
           "Experiment config file, e.g. configs/digits.py.", lock_config=True)
    define(flags.DEFINE_string, "workdir", None, "Directory for checkpoints, logs and samples.")
    multihost.define_flags()


def main(argv: list[str]) -> None:
    from experiments.runs import train_loop
    from experiments.runtime import multihost
    from jaxdiff import checkpoint

    errors.start_cli(argv)
    with errors.exit_on_user_error():
        multihost.initialize_from_flags()
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if config is None or workdir is None:
            raise errors.ConfigError(
                "give --config (e.g. configs/digits.py) and --workdir (e.g. runs/digits)"
            )
        try:
            train_loop.train_and_evaluate(config, workdir)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            if not isinstance(e, checkpoint.CheckpointSaveError):  # logs, TensorBoard
                manager = checkpoint.make_manager(workdir, read_only=True)
                newest = manager.latest_step()
                manager.close()
                e = checkpoint.disk_full_error(f"writing {e.filename or workdir}", newest=newest)
            print(f"error: {e}", file=sys.stderr, flush=True)
            # Orbax's background threads would print their own failures while Python exits.
            os._exit(2)
        except train_loop.TrainingInterrupted as e:
            print(
                f"{e}; checkpoint saved in {workdir}, run the same command to resume",
                file=sys.stderr,
            )
            sys.exit(128 + e.signum)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=errors.parse_flags)
