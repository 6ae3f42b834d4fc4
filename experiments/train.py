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
import json
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tensorboardX import SummaryWriter

from experiments import (
    classifier_setup,
    controlnet_setup,
    finetune,
    from_config,
    multihost,
    progress,
    train_health,
    user_input,
    workdir_lock,
)
from jaxdiff import checkpoint, distributed, optim
from jaxdiff import train as jd_train


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that train.py and sample.py
    can both be imported in one process (tests, notebooks)."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file, e.g. configs/digits.py.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
    multihost.define_flags()


class TrainingInterrupted(Exception):
    """Raised after SIGTERM/SIGINT once the checkpoint of ``step`` is on disk."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    loss_fn: Any = None,
    init_params: Any = None,
    desc: str = "train",
) -> jd_train.TrainState:
    """Trains for ``config.train.steps`` steps in total (resuming), previewing and saving.

    ``loss_fn`` replaces the config's loss and ``init_params`` the random initialisation
    (experiments/distill.py: a student starts as a copy of its teacher); ``desc`` names the
    progress bar. Returns the final TrainState. Raises ConfigError (bad config),
    CheckpointMismatchError (the workdir holds another model), CheckpointDamagedError (no
    intact checkpoint), WorkdirBusyError (another run holds the workdir), FileNotFoundError
    (missing data) before any step, TrainingDivergedError (a whole log window of non-finite
    steps), CheckpointSaveError (disk full), and TrainingInterrupted after saving when
    SIGTERM/SIGINT arrives.
    """
    workdir = user_input.check_workdir(workdir)  # before the lock file is made in it
    with workdir_lock.hold(workdir):
        return _train(config, workdir, loss_fn=loss_fn, init_params=init_params, desc=desc)


def _train(
    config: ml_collections.ConfigDict, workdir: str, *, loss_fn: Any, init_params: Any, desc: str
) -> jd_train.TrainState:
    mesh = from_config.build_mesh(config)
    config = finetune.resolve(config)  # init_from: the pretrained model's settings
    from_config.validate_config(config, num_devices=mesh.size)
    schedule = from_config.build_schedule(config)
    optimizer = finetune.build_optimizer(config)
    if controlnet_setup.enabled(config):  # the base frozen, only the ControlNet trained
        controlnet_setup.validate(config)
        model = controlnet_setup.build_model(config, workdir, for_training=True)
        loss_fn = loss_fn or controlnet_setup.build_loss(config, model, schedule)
        build_data = controlnet_setup.build_data
    else:
        model = from_config.build_model(config)
        loss_fn = loss_fn or from_config.build_loss(config, model, schedule)
        build_data = from_config.build_data

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    main_process = distributed.is_main_process()
    state_key, preview_key = jax.random.split(jax.random.key(int(config.train.seed)))
    # Restored into shapes alone, straight onto this mesh's shardings whatever mesh wrote
    # it: a resumed run, or one whose workdir does not fit the config, never compiles the
    # model's init.
    init = lambda key: from_config.init_state(config, model, optimizer, key)
    shapes = jax.eval_shape(init, state_key)
    shardings = jd_train.state_shardings(shapes, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    manager = checkpoint.make_manager(workdir, keep=int(config.train.keep_checkpoints))
    restored = checkpoint.restore(manager, state=abstract, config=config, set_aside_damaged=True)
    start_step = 0 if restored is None else restored[1]
    # Positioned by step: batch k of the global stream is the same for any process count.
    # Built before the init compiles, so bad data is reported at once.
    data_iterator = build_data(config, start_batch=start_step)
    if restored is not None:
        state = restored[0]
        if main_process:
            print(f"resuming from the checkpoint of step {start_step} in {workdir}",
                  file=sys.stderr)
    else:
        if init_params is not None:  # the rng a fresh init_state would draw
            state = jd_train.put_global(jd_train.create_train_state(
                init_params, optimizer, jax.random.split(state_key)[1]), shardings)
        elif config.get("init_from"):  # pretrained params, read on the host
            state = jd_train.put_global(
                finetune.init_state(config, model, optimizer, state_key), shardings
            )
        else:
            state = jax.jit(init, out_shardings=shardings)(state_key)
    if main_process:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    total_steps = int(config.train.steps)
    if start_step >= total_steps:
        print(f"{workdir} is already trained for {start_step} >= train.steps={total_steps} steps")
        return state
    train_step = jd_train.make_train_step(loss_fn, optimizer, mesh, state_sharding=shardings)
    # A classifier run (classifier guidance) previews accuracy by noise level, not samples.
    preview_type = (
        classifier_setup.NoiseLevelAccuracy if classifier_setup.is_classifier(config) else _Preview
    )
    preview = preview_type(config, model, schedule, workdir, preview_key, mesh)
    logger = _MetricLogger(workdir, start_step=start_step, write=main_process)
    health = train_health.HealthCheck(float(config.train.learning_rate), verbose=main_process)
    stop = _StopOnSignal()
    t = config.train
    last_saved = start_step
    step = start_step

    def save(step: int, state: jd_train.TrainState) -> int:
        # Waits for the write: a crash (SIGKILL, OOM) then loses at most checkpoint_every
        # steps; an async save still in flight would lose twice that.
        checkpoint.save(manager, step, state=state, config=config, wait=True)
        return step

    bar = progress.Progress(
        total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
        disable=not main_process,
    )
    try:
        with stop:
            while step < total_steps and stop.signum is None:
                batch = jd_train.shard_batch(next(data_iterator), mesh)
                state, metrics = train_step(state, batch)
                step += 1
                logger.append(metrics)  # stays on device until the next log line
                bar.update(step, metrics)  # blocks once a second: the bar shows finished steps
                done = step == total_steps
                if step % t.log_every == 0 or done:
                    window = step - logger.step
                    record = logger.write(step, batch_size=int(config.data.batch_size))
                    health.check(record, steps=window)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}",
                        steps_per_s=f"{record['steps_per_s']:.2f}",
                        images_per_s=f"{record['images_per_s']:.0f}",
                    )
                if step % t.sample_every == 0 or done:  # a grid from every run, even short ones
                    preview.write(step, optim.ema_params(state.opt_state), logger.writer)
                if step % t.checkpoint_every == 0 or done:
                    last_saved = save(step, state)
            if stop.signum is not None and last_saved != step:
                save(step, state)
    finally:
        bar.close()
        manager.close()
        logger.close()
    if stop.signum is not None:
        raise TrainingInterrupted(stop.signum, step)
    return state


class _StopOnSignal:
    """Within ``with``: the first SIGTERM/SIGINT sets ``signum`` (the loop then saves and
    stops); a second Ctrl-C raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
            "(Ctrl-C again to stop without saving)",
            file=sys.stderr,
        )

    def __enter__(self):
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


class _MetricLogger:
    """Metrics to ``metrics.jsonl`` and TensorBoard, averaged over each log window.

    On resume the lines (and TensorBoard events) after the restored step are dropped: they
    came from steps a crash threw away and that are now run again. With ``write`` False
    (processes other than 0) nothing is written; ``write`` still returns the record.
    """

    def __init__(self, workdir: pathlib.Path, *, start_step: int, write: bool = True):
        self.path = workdir / "metrics.jsonl"
        self.file = self.writer = None
        self.pending: list[dict[str, jax.Array]] = []
        self.time, self.step = time.perf_counter(), start_step
        if not write:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        self.writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1)

    def append(self, metrics: dict[str, jax.Array]) -> None:
        self.pending.append(metrics)

    def write(self, step: int, *, batch_size: int) -> dict[str, float]:
        window = jax.device_get(self.pending)  # the loop's only regular host sync
        now = time.perf_counter()
        steps_per_s = (step - self.step) / max(now - self.time, 1e-9)
        record: dict[str, float] = {"step": step}
        for key in window[0]:
            values = np.array([m[key] for m in window], np.float64)
            record[key] = float(values.sum() if key == "skipped" else values.mean())
        record.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * batch_size)
        self.pending, self.time, self.step = [], now, step
        if self.file is None:
            return record
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(f"train/{key}", value, step)
        return record

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.writer.close()


class _Preview:
    """A grid of samples from the EMA params: one row per class (with the config's CFG
    scale) for a conditional model. The same noise every time, so grids compare across
    steps."""

    def __init__(self, config, model, schedule, workdir, key, mesh):
        from jaxdiff import viz

        self.viz = viz
        s = config.sample
        self.cond, rows = from_config.grid_conds(model, per_row=int(s.num))
        num = int(s.num) * rows if rows else int(s.num)
        self.ncol = from_config.grid_columns(num, rows)
        self.show = lambda images: images
        if controlnet_setup.enabled(config):  # held-out hints, shown above the samples
            self.cond, _ = controlnet_setup.sample_conds(
                config, None, hint_image=None, hint_type=None, compute_hint=False,
                hints_from_data=num,
            )
            hint_maps = np.asarray(self.cond["hint"])
            self.show = lambda images: controlnet_setup.hints_above(
                images, hint_maps, ncol=self.ncol
            )
        self.scale = viz.display_scale(int(config.data.image_size))
        self.sample = from_config.make_sample_fn(
            model,
            schedule,
            sampler=s.sampler,
            steps=int(s.steps),
            eta=float(s.eta),
            guidance_scale=float(s.guidance_scale),
            prediction=config.diffusion.prediction,
            shape=from_config.image_shape(config, batch=num),
            spacing=s.get("spacing"),
            # Data-parallel over the devices when the grid splits evenly over them.
            mesh=mesh if num % mesh.size == 0 else None,
        )
        self.key = key
        self.dir = workdir / "samples"

    def write(self, step: int, params: Any, writer: SummaryWriter | None) -> None:
        images, _ = self.sample(params, self.key, self.cond)  # every process computes
        if jax.process_count() > 1:  # rows on other processes' devices: gather them
            images = multihost_utils.process_allgather(images, tiled=True)
        if writer is None:  # not the main process
            return
        images = self.show(np.asarray(images))
        self.dir.mkdir(exist_ok=True)
        path = self.dir / f"step_{step:07d}.png"
        grid = self.viz.image_grid(np.asarray(images), ncol=self.ncol, scale=self.scale)
        self.viz.save_grid(str(path), np.asarray(images), ncol=self.ncol, scale=self.scale)
        writer.add_image(
            "samples",
            grid,
            step,
            dataformats="HWC",
        )


def main(argv: list[str]) -> None:
    from_config.start_cli(argv)
    with from_config.exit_on_user_error():
        multihost.initialize_from_flags()
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        if config is None or workdir is None:
            raise from_config.ConfigError(
                "give --config (e.g. configs/digits.py) and --workdir (e.g. runs/digits)"
            )
        try:
            train_and_evaluate(config, workdir)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            if not isinstance(e, checkpoint.CheckpointSaveError):  # logs, TensorBoard
                newest = checkpoint.make_manager(workdir, read_only=True).latest_step()
                e = checkpoint.disk_full_error(f"writing {e.filename or workdir}", newest=newest)
            print(f"error: {e}", file=sys.stderr, flush=True)
            # Orbax's background threads would print their own failures while Python exits.
            os._exit(2)
        except TrainingInterrupted as e:
            print(
                f"{e}; checkpoint saved in {workdir}, run the same command to resume",
                file=sys.stderr,
            )
            sys.exit(128 + e.signum)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=from_config.parse_flags)
