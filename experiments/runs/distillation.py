"""Progressive distillation of a trained v-prediction teacher (Salimans & Ho 2022, alg. 2):
the rounds of ``python -m experiments.distill`` and how a distillation workdir is sampled.

Rounds halve the step count from ``distill.start_steps`` (the first teacher's DDIM steps) to
1. Each round trains a student (``kinds.Student``), initialised from its teacher, to take in
one DDIM step what the teacher takes in two (``jaxdiff.distillation``), with the ordinary
train loop; its EMA params are the next round's teacher. Each round is an ordinary workdir,
``<workdir>/steps_<N>`` (N = the student's steps); ``<workdir>/distill.json`` lists the
finished rounds.
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

from experiments.runs import builders, kinds, restore, train_loop, validation
from experiments.runtime.errors import ConfigError
from jaxdiff import distillation, optim

MARKER = "distill.json"


def round_steps(start_steps: int, num_timesteps: int) -> list[int]:
    """The students' step counts start_steps/2, ..., 2, 1, checked to nest in T."""
    n = int(start_steps)
    if n < 2 or n & (n - 1) or int(num_timesteps) % n:
        raise ConfigError(
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
        raise ConfigError(
            "set --config.distill.teacher_workdir to a trained v-prediction run (e.g. "
            "python -m experiments.train --config configs/digits_v.py --workdir runs/digits_v)"
        )
    teacher_config = restore.load_run_config(d.teacher_workdir)
    if teacher_config.diffusion.loss != "denoising":
        raise ConfigError(
            "progressive distillation takes a denoising (DDPM, v-prediction) teacher; "
            f"{d.teacher_workdir} is a diffusion.loss={teacher_config.diffusion.loss!r} run"
        )
    prediction = teacher_config.diffusion.prediction
    if prediction == "eps":
        raise ConfigError(
            f"{d.teacher_workdir} predicts eps, and a student inherits its teacher's "
            "prediction: eps-parameterised students fail at low signal-to-noise ratios "
            "(Salimans & Ho 2022, sec. 4). Distil a v- or x0-prediction teacher (e.g. "
            "configs/digits_v.py, diffusion.prediction='v')"
        )
    model = kinds.build_model(teacher_config)
    schedule = builders.build_schedule(teacher_config)
    steps = round_steps(d.start_steps, schedule.num_timesteps)
    raw, ema, teacher_step = restore.restore_for_sampling(
        teacher_config, d.teacher_workdir, model
    )
    teacher_params = ema if d.get("teacher_ema", True) else raw
    num_classes, _ = builders.cond_spec(model)
    guidance_scale = float(d.guidance_scale)
    validation.validate_sampling(
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
        validation.validate_config(round_config, num_devices=jax.device_count())
        loss_fn = distillation.make_progressive_distillation_loss(
            model.apply,
            denoise_fn(model, teacher_params),
            schedule,
            num_student_steps=n,
            prediction=prediction,
            teacher_prediction=prediction,
            # Only the first teacher is guided: later ones learnt the guided output.
            teacher_guidance_scale=guidance_scale if n == steps[0] else 0.0,
            num_classes=num_classes,
            cond_drop_prob=float(round_config.train.cond_drop_prob),
        )
        start = time.perf_counter()
        student = kinds.Student(
            loss_fn=loss_fn,
            # A copy: the train step donates its state, and the teacher keeps these arrays.
            init_params=jax.tree.map(jnp.copy, teacher_params),
        )
        state = train_loop.train_and_evaluate(
            round_config, str(workdir / f"steps_{n:03d}"), kind=student,
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


def denoise_fn(model, params):
    return lambda x_t, t, cond: model.apply({"params": params}, x_t, t, cond)


def student_for_sampling(workdir: str, steps: int | None) -> tuple[str, int | None]:
    """(workdir, steps) to sample from: a distillation workdir resolves to its ``steps``-step
    student (default: the fewest steps); a student samples only at its own step count."""
    root = pathlib.Path(workdir)
    if (root / MARKER).exists():
        rounds = json.loads((root / MARKER).read_text())["rounds"]
        available = {r["student_steps"]: r["workdir"] for r in rounds}
        if not available:
            raise ConfigError(f"{workdir} has no finished distillation round yet")
        steps = min(available) if steps is None else int(steps)
        if steps not in available:
            raise ConfigError(
                f"{workdir} has students for {sorted(available, reverse=True)} steps, not "
                f"{steps}: a distilled student samples at its own step count"
            )
        return str(root / available[steps]), steps
    config = restore.load_run_config(workdir)
    student_steps = config.get("distill", {}).get("student_steps")
    if student_steps is not None and steps is not None and int(steps) != int(student_steps):
        raise ConfigError(
            f"{workdir} is a {student_steps}-step distilled student; sample it with --steps "
            f"{student_steps} (other step counts are other rounds' students)"
        )
    return workdir, steps
