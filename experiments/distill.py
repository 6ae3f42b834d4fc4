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

import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import from_config
from experiments import train as train_cli
from jaxdiff import distillation, optim

MARKER = "distill.json"


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Distillation config, e.g. configs/digits_distill.py.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Directory for the rounds' workdirs.")


def round_steps(start_steps: int, num_timesteps: int) -> list[int]:
    """The students' step counts start_steps/2, ..., 2, 1, checked to nest in T."""
    n = int(start_steps)
    if n < 2 or n & (n - 1) or int(num_timesteps) % n:
        raise from_config.ConfigError(
            f"distill.start_steps={start_steps} must be a power of two >= 2 that divides the "
            f"teacher's diffusion.num_timesteps={num_timesteps}, so every round's grids nest"
        )
    return [n >> k for k in range(1, n.bit_length())]


def student_config(
    config: ml_collections.ConfigDict, teacher: ml_collections.ConfigDict, steps: int
) -> ml_collections.ConfigDict:
    """The run config of the ``steps``-step student: ``config`` with the teacher's model and
    diffusion, previews and sampling defaults at its own grid (DDIM, trailing, no CFG)."""
    round_config = ml_collections.ConfigDict(config.to_dict())
    round_config.model = teacher.model.to_dict()
    round_config.diffusion = teacher.diffusion.to_dict()
    round_config.sample.update(
        sampler="ddim", steps=int(steps), spacing="trailing", eta=0.0, guidance_scale=0.0
    )
    round_config.distill.student_steps = int(steps)
    return round_config


def distill(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Runs (or resumes) every round; returns the rounds written to ``distill.json``."""
    d = config.distill
    if not d.get("teacher_workdir"):
        raise from_config.ConfigError(
            "set --config.distill.teacher_workdir to a trained v-prediction run (e.g. "
            "python -m experiments.train --config configs/digits_v.py --workdir runs/digits_v)"
        )
    teacher_config = from_config.load_run_config(d.teacher_workdir)
    model = from_config.build_model(teacher_config)
    schedule = from_config.build_schedule(teacher_config)
    steps = round_steps(d.start_steps, schedule.num_timesteps)
    raw, ema, teacher_step = from_config.restore_for_sampling(
        teacher_config, d.teacher_workdir, model
    )
    teacher_params = ema if d.get("teacher_ema", True) else raw
    num_classes, _ = from_config.cond_spec(model)
    guidance_scale = float(d.guidance_scale)
    from_config.validate_sampling(
        teacher_config, sampler="ddim", steps=1, eta=0.0, guidance_scale=guidance_scale
    )

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / MARKER
    rounds = json.loads(marker.read_text())["rounds"] if marker.exists() else []
    done = {r["student_steps"]: r for r in rounds}
    print(f"teacher: {d.teacher_workdir} (step {teacher_step}); students: {steps} steps",
          file=sys.stderr)
    for n in steps:
        round_config = student_config(config, teacher_config, n)
        from_config.validate_config(round_config, num_devices=jax.device_count())
        loss_fn = distillation.make_progressive_distillation_loss(
            model.apply,
            _denoise_fn(model, teacher_params),
            schedule,
            num_student_steps=n,
            prediction=teacher_config.diffusion.prediction,
            teacher_prediction=teacher_config.diffusion.prediction,
            # Only the first teacher is guided: later ones learnt the guided output.
            teacher_guidance_scale=guidance_scale if n == steps[0] else 0.0,
            num_classes=num_classes,
            cond_drop_prob=float(round_config.train.cond_drop_prob),
        )
        start = time.perf_counter()
        state = train_cli.train_and_evaluate(
            round_config,
            str(workdir / f"steps_{n:03d}"),
            loss_fn=loss_fn,
            # A copy: the train step donates its state, and the teacher keeps these arrays.
            init_params=jax.tree.map(jnp.copy, teacher_params),
            desc=f"distill {2 * n}->{n} steps",
        )
        seconds = time.perf_counter() - start
        teacher_params = optim.ema_params(state.opt_state)
        if n not in done:  # a round that was already finished keeps its first timing
            done[n] = {"student_steps": n, "train_steps": int(round_config.train.steps),
                       "seconds": round(seconds, 1), "workdir": f"steps_{n:03d}"}
            marker.write_text(json.dumps({"teacher": str(d.teacher_workdir),
                                          "rounds": [done[k] for k in steps if k in done]},
                                         indent=2) + "\n")
    return [done[k] for k in steps]


def _denoise_fn(model, params):
    return lambda x_t, t, cond: model.apply({"params": params}, x_t, t, cond)


def student_for_sampling(workdir: str, steps: int | None) -> tuple[str, int | None]:
    """(workdir, steps) to sample from: a distillation workdir resolves to its ``steps``-step
    student (default: the fewest steps); a student samples only at its own step count."""
    root = pathlib.Path(workdir)
    if (root / MARKER).exists():
        rounds = json.loads((root / MARKER).read_text())["rounds"]
        available = {r["student_steps"]: r["workdir"] for r in rounds}
        if not available:
            raise from_config.ConfigError(f"{workdir} has no finished distillation round yet")
        steps = min(available) if steps is None else int(steps)
        if steps not in available:
            raise from_config.ConfigError(
                f"{workdir} has students for {sorted(available, reverse=True)} steps, not "
                f"{steps}: a distilled student samples at its own step count"
            )
        return str(root / available[steps]), steps
    config = from_config.load_run_config(workdir)
    student_steps = config.get("distill", {}).get("student_steps")
    if student_steps is not None and steps is not None and int(steps) != int(student_steps):
        raise from_config.ConfigError(
            f"{workdir} is a {student_steps}-step distilled student; sample it with --steps "
            f"{student_steps} (other step counts are other rounds' students)"
        )
    return workdir, steps


def main(argv: list[str]) -> None:
    from_config.start_cli(argv)
    with from_config.exit_on_user_error():
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if config is None or workdir is None:
            raise from_config.ConfigError(
                "give --config (e.g. configs/digits_distill.py) and --workdir (e.g. runs/digits_pd)"
            )
        try:
            rounds = distill(config, workdir)
        except train_cli.TrainingInterrupted as e:
            print(f"{e}; run the same command to resume", file=sys.stderr)
            sys.exit(128 + e.signum)
        for r in rounds:
            print(f"{2 * r['student_steps']}->{r['student_steps']} steps: "
                  f"{r['train_steps']} train steps in {r['seconds']:.0f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=from_config.parse_flags)
