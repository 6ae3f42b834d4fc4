"""The train loop's metrics: ``metrics.jsonl`` and TensorBoard, one record per log window."""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter


class MetricLogger:
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
