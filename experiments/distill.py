"""Progressive distillation of a trained v-prediction teacher (Salimans & Ho 2022, alg. 2).

    python -m experiments.distill --config configs/digits_distill.py --workdir runs/digits_pd \\
        --config.distill.teacher_workdir=runs/digits_v
    python -m experiments.sample --workdir runs/digits_pd --steps 4

Rounds halve the step count from ``distill.start_steps`` (the first teacher's DDIM steps) to
1. Each round trains a student, initialised from its teacher, to take in one DDIM step what
the teacher takes in two (``jaxdiff.distillation``), with the ordinary train step, EMA in the
optimizer state, checkpoints and a preview grid at the round's step count; its EMA params are
the next round's teacher. The first teacher is classifier-free guided at
``distill.guidance_scale``; the students then sample without guidance.

Each round is an ordinary workdir, ``<workdir>/steps_<N>`` (N = the student's steps), so
experiments.sample / evaluate read a student like any run. ``<workdir>/distill.json`` lists
the rounds and each round's wall time. A kill mid-round (SIGTERM, SIGKILL) resumes exactly:
the finished rounds are restored, the current one continues from its newest checkpoint.
"""

from __future__ import annotations

import sys

from absl import flags

from experiments.runtime import errors
from experiments.runtime.flag_defs import define

# Module level imports nothing that registers flags (jaxdiff, orbax, grain, absl.logging,
# ml_collections.config_flags do): define_flags() and main() import what they use.


def define_flags() -> None:
    from ml_collections import config_flags

    define(config_flags.DEFINE_config_file, "config", None,
           "Distillation config, e.g. configs/digits_distill.py.", lock_config=True)
    define(flags.DEFINE_string, "workdir", None, "Directory for the rounds' workdirs.")


def main(argv: list[str]) -> None:
    from experiments.runs import distillation, train_loop

    errors.start_cli(argv)
    with errors.exit_on_user_error():
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if config is None or workdir is None:
            raise errors.ConfigError(
                "give --config (e.g. configs/digits_distill.py) and --workdir (e.g. runs/digits_pd)"
            )
        try:
            rounds = distillation.distill(config, workdir)
        except train_loop.TrainingInterrupted as e:
            print(f"{e}; run the same command to resume", file=sys.stderr)
            sys.exit(128 + e.signum)
        for r in rounds:
            print(f"{2 * r['student_steps']}->{r['student_steps']} steps: "
                  f"{r['train_steps']} train steps in {r['seconds']:.0f} s")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=errors.parse_flags)
