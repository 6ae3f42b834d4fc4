"""The progress of a training run, measured on finished steps.

jax dispatches work asynchronously: ``train_step`` returns as soon as the step is queued,
so a bar advanced on every call runs ahead of the computation and then stalls on the next
host sync. ``Progress`` instead waits for a step's result once per refresh interval (a
second by default; tqdm redraws no faster anyway) and only then moves the bar to that step:
the bar shows finished steps, and the loop still runs ahead between refreshes.

The same timings give the run's expected duration; on CPU, when that is more than an hour,
``Progress`` warns once, with the estimate and the ways to a shorter run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import tqdm

WARN_ABOVE_SECONDS = 3600.0
# Steps timed (after the first, which compiles) before the estimate is trusted.
ESTIMATE_AFTER_STEPS = 2
ESTIMATE_AFTER_SECONDS = 2.0


def format_duration(seconds: float) -> str:
    """``'35 h 12 min'``, ``'12 min'`` or ``'40 s'``."""
    seconds = float(seconds)
    if seconds >= 3600:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h {rest} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"


def runtime_warning(
    *, seconds_per_step: float, remaining_steps: int, backend: str
) -> str | None:
    """The warning for a run on CPU expected to take more than an hour, else None."""
    remaining = seconds_per_step * remaining_steps
    if backend != "cpu" or remaining <= WARN_ABOVE_SECONDS:
        return None
    return (
        "warning: this run needs about "
        f"{format_duration(remaining)} more on this CPU ({remaining_steps} steps at "
        f"{seconds_per_step:.2f} s/step). For a first run use configs/digits.py (minutes on "
        "a laptop), lower --config.train.steps, or train on a GPU (README, 'GPUs and TPUs'); "
        "Ctrl-C saves a checkpoint and the same command resumes."
    )


class Progress:
    """A tqdm bar over finished steps, plus the one-time CPU run-time warning.

    Call ``update(step, result)`` after dispatching step ``step`` with any jax value it
    produced (e.g. its metrics). At most once per ``interval`` seconds it blocks until
    ``result`` is computed and moves the bar to ``step``; ``close()`` finishes the bar.
    """

    def __init__(
        self,
        *,
        total: int,
        initial: int,
        interval: float = 1.0,
        backend: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        write: Callable[[str], None] | None = None,
        **tqdm_kwargs: Any,
    ):
        self.bar = tqdm.tqdm(total=total, initial=initial, **tqdm_kwargs)
        self.total, self.interval = total, interval
        self.backend = backend or jax.default_backend()
        self.clock = clock
        self.write = write or (lambda line: tqdm.tqdm.write(line, file=sys.stderr))
        self.finished = initial
        self.last_refresh = clock()
        self.timed_from: tuple[int, float] | None = None  # (step, time) after the compile
        self.warned = False

    def update(self, step: int, result: Any) -> None:
        now = self.clock()
        if now - self.last_refresh < self.interval and step != self.total:
            return
        jax.block_until_ready(result)
        now = self.clock()
        self.bar.update(step - self.finished)
        self.finished, self.last_refresh = step, now
        self._estimate(step, now)

    def _estimate(self, step: int, now: float) -> None:
        if self.warned:
            return
        if self.timed_from is None:  # the first finished step paid for the compile
            self.timed_from = (step, now)
            return
        first_step, first_time = self.timed_from
        if step - first_step < ESTIMATE_AFTER_STEPS or now - first_time < ESTIMATE_AFTER_SECONDS:
            return
        self.warned = True  # one estimate per run, warning or not
        warning = runtime_warning(
            seconds_per_step=(now - first_time) / (step - first_step),
            remaining_steps=self.total - step,
            backend=self.backend,
        )
        if warning and not self.bar.disable:  # a disabled bar (not process 0) says nothing
            self.write(warning)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()
