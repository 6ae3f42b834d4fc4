"""Holding back what a failing orbax save prints, so that a full disk reads as one line.

While a checkpoint is written, orbax's background threads log every failed write with a
traceback (absl and asyncio loggers, thread exceptions) and tensorstore's callbacks print
from C++ straight to file descriptor 2. ``held_error_output`` keeps all of that aside; the
caller either drops it (the failure is reported in one line) or ``release``s it (shown as
it would have been).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any


class HeldOutput(logging.Filter):
    """Holds back ERROR records (orbax's background threads log each failed write with a
    traceback) until ``release``: a full disk then reads as one line, any other failure
    still shows them."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.loggers = [logging.getLogger("absl"), logging.getLogger("asyncio")]
        self.thread_errors: list[Any] = []
        self.excepthook = threading.excepthook
        self.stderr_fd: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.records.append(record)
            return False
        return True

    def release(self) -> None:
        self.stop()
        self.captured.seek(0)
        text = self.captured.read()
        self.captured.close()
        if text:
            os.write(2, text)
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        for args in self.thread_errors:
            self.excepthook(args)
        self.records, self.thread_errors = [], []

    def start(self) -> None:
        for logger in self.loggers:
            logger.addFilter(self)
        threading.excepthook = self.thread_errors.append  # orbax's threads die noisily too
        # tensorstore's callbacks print tracebacks from C++ straight to file descriptor 2.
        sys.stderr.flush()
        self.captured = tempfile.TemporaryFile()
        self.stderr_fd = os.dup(2)
        os.dup2(self.captured.fileno(), 2)

    def stop(self) -> None:
        for logger in self.loggers:
            logger.removeFilter(self)
        threading.excepthook = self.excepthook
        if self.stderr_fd is not None:
            sys.stderr.flush()
            os.dup2(self.stderr_fd, 2)
            os.close(self.stderr_fd)
            self.stderr_fd = None


@contextlib.contextmanager
def held_error_output() -> Iterator[HeldOutput]:
    held = HeldOutput()
    held.start()
    try:
        yield held
    finally:
        held.stop()


def quiet_asyncio() -> None:
    """After a failed save: orbax's threads leave futures whose errors asyncio would log at
    exit."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
