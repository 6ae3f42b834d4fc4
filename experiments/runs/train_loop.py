"""The train loop: from a config and a workdir to a trained run, resuming from the workdir's
newest checkpoint, with metrics, previews, checkpoints and a clean stop on SIGTERM/SIGINT.
What the run trains (model, loss, data, initial state, preview) its kind decides
(``experiments.runs.kinds``)."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
from typing import Any

import jax
import ml_collections

from experiments.runs import builders, kinds
from experiments.runs.metric_log import MetricLogger
from experiments.runs.stop import StopOnSignal, TrainingInterrupted
from experiments.runtime import progress, train_health, user_input, workdir_lock
from jaxdiff import checkpoint, distributed, optim
from jaxdiff import train as jd_train

__all__ = ["TrainingInterrupted", "train_and_evaluate"]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    kind: kinds.RunKind | None = None,
    desc: str = "train",
) -> jd_train.TrainState:
    """Trains for ``config.train.steps`` steps in total (resuming), previewing and saving.

    ``kind`` replaces the kind ``kinds.kind_of(config)`` finds (experiments/runs/
    distillation.py: a ``kinds.Student`` with its teacher's loss and params); ``desc`` names
    the progress bar. Returns the final TrainState. Raises ConfigError (bad config),
    CheckpointMismatchError (the workdir holds another model), CheckpointDamagedError (no
    intact checkpoint), WorkdirBusyError (another run holds the workdir), FileNotFoundError
    (missing data) before any step, TrainingDivergedError (a whole log window of non-finite
    steps), CheckpointSaveError (disk full), and TrainingInterrupted after saving when
    SIGTERM/SIGINT arrives.
    """
    workdir = user_input.check_workdir(workdir)  # before the lock file is made in it
    run = prepare(config, workdir, kind or kinds.kind_of(config))
    with workdir_lock.hold(workdir):
        return train(run, workdir, desc=desc)


@dataclasses.dataclass
class Prepared:
    """What a run is made of, built and checked before its workdir is touched: a bad config
    or bad data end the run before a lock, a directory or a checkpoint manager exists."""

    config: ml_collections.ConfigDict
    kind: kinds.RunKind
    mesh: jax.sharding.Mesh
    schedule: Any
    optimizer: Any
    model: Any
    loss_fn: Any
    data_iterator: Any
    start_batch: int  # the batch the iterator starts at: the newest checkpoint's step


def prepare(config: ml_collections.ConfigDict, workdir: str, kind: kinds.RunKind) -> Prepared:
    """The run's mesh, model, loss and data iterator (at the newest checkpoint's step, as
    the step directories on disk say), each checked; nothing is written."""
    mesh = builders.build_mesh(config)
    config = kind.resolve(config)  # init_from: the pretrained model's settings
    kind.validate(config, num_devices=mesh.size)
    schedule = builders.build_schedule(config)
    model = kind.build_model(config, workdir, for_training=True)
    start = checkpoint.newest_step(workdir) or 0
    return Prepared(config, kind, mesh, schedule, kind.build_optimizer(config), model,
                    kind.build_loss(config, model, schedule),
                    kind.build_data(config, start_batch=start), start)


def train(run: Prepared, workdir: str, *, desc: str) -> jd_train.TrainState:
    """``train_and_evaluate`` once the run is prepared and the workdir is checked and locked."""
    config, kind, mesh, model = run.config, run.kind, run.mesh, run.model
    optimizer, schedule, loss_fn = run.optimizer, run.schedule, run.loss_fn
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    main_process = distributed.is_main_process()
    state_key, preview_key = jax.random.split(jax.random.key(int(config.train.seed)))
    # Restored into shapes alone, straight onto this mesh's shardings whatever mesh wrote
    # it: a resumed run, or one whose workdir does not fit the config, never compiles the
    # model's init.
    init = lambda key: builders.init_state(config, model, optimizer, key)
    shapes = jax.eval_shape(init, state_key)
    shardings = jd_train.state_shardings(shapes, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    manager = checkpoint.make_manager(workdir, keep=int(config.train.keep_checkpoints))
    # Closed on every way out (orbax's threads would otherwise report a one-line error's exit
    # with tracebacks of their own).
    with contextlib.closing(manager):
        restored = checkpoint.restore(
            manager, state=abstract, config=config, set_aside_damaged=True
        )
        start_step = 0 if restored is None else restored[1]
        # Positioned by step: batch k of the global stream is the same for any process count.
        data_iterator = run.data_iterator
        if start_step != run.start_batch:  # the newest step was damaged: an older one resumes
            data_iterator = kind.build_data(config, start_batch=start_step)
        if restored is not None:
            state = restored[0]
            if main_process:
                print(f"resuming from the checkpoint of step {start_step} in {workdir}",
                      file=sys.stderr)
        else:
            state = kind.initial_state(config, model, optimizer, state_key)  # read on the host
            if state is None:
                state = jax.jit(init, out_shardings=shardings)(state_key)
            else:
                state = jd_train.put_global(state, shardings)
        if main_process:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

        total_steps = int(config.train.steps)
        if start_step >= total_steps:
            print(f"{workdir} is already trained for {start_step} >= train.steps={total_steps} "
                  "steps")
            return state
        train_step = jd_train.make_train_step(loss_fn, optimizer, mesh, state_sharding=shardings)
        preview = kind.preview(config, model, schedule, workdir, preview_key, mesh)
        logger = MetricLogger(workdir, start_step=start_step, write=main_process)
        health = train_health.HealthCheck(float(config.train.learning_rate), verbose=main_process)
        stop = StopOnSignal()
        t = config.train
        last_saved = start_step
        step = start_step
        stopping = False

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
                while step < total_steps and not stopping:
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
                    stopping = stop.should_stop(step)  # the same step on every process
                if stopping and last_saved != step:
                    save(step, state)
        finally:
            bar.close()
            logger.close()
        if stopping:
            raise TrainingInterrupted(stop.signum, step)
        return state
