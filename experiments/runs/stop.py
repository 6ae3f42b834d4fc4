"""Stopping a training run cleanly: the first SIGTERM/SIGINT lets the loop save a checkpoint
and stop; ``TrainingInterrupted`` then says so, and the CLI exits with 128 + the signal.

With several processes every process must stop after the same step, because the checkpoint
save that follows is collective: a process that saves while another is in the next step's
all-reduce hangs the job. A signal often reaches only some processes (a preempted host, a
``kill`` on one node), so the processes agree through JAX's preemption sync point
(``jax.experimental.multihost_utils.reached_preemption_sync_point``, the mechanism behind
orbax's ``CheckpointManager.reached_preemption``): the coordination service's SIGTERM
notifier tells every process, and all of them reach the sync point at the same step. Python
must then leave SIGTERM to that notifier; Ctrl-C on one process is turned into a SIGTERM to
itself, so it is agreed the same way. Where the preemption service is off
(``jax_enable_preemption_service=False``), the processes share their stop flags with an
all-gather after every step instead.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class TrainingInterrupted(Exception):
    """Raised after SIGTERM/SIGINT once the checkpoint of ``step`` is on disk."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


def _announce(signum: int) -> None:
    print(
        f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping "
        "(Ctrl-C again to stop without saving)",
        file=sys.stderr,
    )


class StopOnSignal:
    """Within ``with``: the first SIGTERM/SIGINT asks the loop to save and stop; a second
    Ctrl-C raises KeyboardInterrupt at once. The loop asks ``should_stop(step)`` after every
    step; on several processes its answer is the same on all of them, at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None  # the signal this process received, if any
        self._previous: dict[int, Any] = {}
        self._processes = jax.process_count()
        self._sync_point = self._processes > 1 and bool(
            jax.config.jax_enable_preemption_service
        )

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        _announce(signum)
        if self._sync_point:  # tell the other processes through the preemption notifier
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (called once per step, ``step`` rising).
        Collective with several processes: every process calls it after every step."""
        if self._processes == 1:
            return self.signum is not None
        if self._sync_point:
            stop = multihost_utils.reached_preemption_sync_point(int(step))
            if stop and self.signum is None:
                self.signum = signal.SIGTERM
                _announce(signal.SIGTERM)
            return stop
        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if self.signum is None and flags.any():
            self.signum = int(flags[flags > 0][0])
            _announce(self.signum)
        return bool(flags.any())

    def __enter__(self):
        # With the sync point, SIGTERM stays with JAX's notifier (a Python handler would
        # replace it and the other processes would never hear of the signal).
        signals = (signal.SIGINT,) if self._sync_point else self.SIGNALS
        try:
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
            pass
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False
