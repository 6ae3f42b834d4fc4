"""Stopping a training run cleanly: the first SIGTERM/SIGINT lets the loop save a checkpoint
and stop; ``TrainingInterrupted`` then says so, and the CLI exits with 128 + the signal."""

from __future__ import annotations

import signal
import sys
from typing import Any


class TrainingInterrupted(Exception):
    """Raised after SIGTERM/SIGINT once the checkpoint of ``step`` is on disk."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class StopOnSignal:
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
