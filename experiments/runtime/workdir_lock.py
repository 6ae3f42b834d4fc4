"""One training run per workdir: a lock file that names the process holding it.

Two runs in one workdir would overwrite each other's checkpoints and interleave or wipe
``metrics.jsonl``. ``hold(workdir)`` takes an exclusive ``flock`` on ``<workdir>/train.lock``
and writes the holder's PID, host and start time into it; the kernel drops the lock when the
process dies however it dies, so a lock left by a killed run (its file still names the dead
PID) is taken over with a note. With several processes, process 0 takes the lock for all.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
from collections.abc import Iterator

from jaxdiff import distributed

LOCK_FILE = "train.lock"


class WorkdirBusyError(OSError):
    """Another live run holds the workdir's lock."""


def _describe(holder: dict) -> str:
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _read(file) -> dict:
    file.seek(0)
    try:
        return json.loads(file.read() or "{}")
    except ValueError:
        return {}


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds ``<workdir>/train.lock`` for the duration of the ``with`` block.

    Raises:
      WorkdirBusyError: another live process holds it; the message names its PID and host.
    """
    path = pathlib.Path(workdir) / LOCK_FILE
    file = None
    busy = ""
    if distributed.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = _describe(_read(file))
            file.close()
            file = None
    if distributed.agree(bool(busy)):
        raise WorkdirBusyError(
            f"{pathlib.Path(workdir)} is in use by another training run ("
            f"{busy or 'see process 0'}); wait for it to finish or stop it, or use another "
            "--workdir"
        )
    try:
        if file is not None:
            previous = _read(file)
            if previous:
                print(
                    f"note: took over the lock of {pathlib.Path(workdir)} from "
                    f"{_describe(previous)}, which is no longer running",
                    file=sys.stderr,
                )
            file.seek(0)
            file.truncate()
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "started": now}))
            file.flush()
        yield
    finally:
        if file is not None:
            file.seek(0)
            file.truncate()  # a clean exit leaves no holder to report
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()
