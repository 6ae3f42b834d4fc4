"""Training health: a run whose steps are skipped as non-finite must not end quietly.

The train step skips an update whose loss or gradient is NaN/inf (``jaxdiff.train``) and
counts it in ``metrics['skipped']``. One such step now and then is harmless; most of a log
window skipped means the run diverged (learning rate too high?) or the data hold NaN/inf.
``HealthCheck.check`` warns on stderr the first time more than half of a window is skipped,
and raises ``TrainingDivergedError`` once every step of a window, and at least
``min_skipped_in_a_row`` steps in a row, were skipped.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping


class TrainingDivergedError(ValueError):
    """Every step of a log window was skipped as non-finite; the run makes no progress."""


@dataclasses.dataclass
class HealthCheck:
    learning_rate: float
    min_skipped_in_a_row: int = 10
    verbose: bool = True  # process 0 prints; the others raise just the same
    warned: bool = False
    skipped_in_a_row: int = 0

    def _advice(self, record: Mapping[str, float]) -> str:
        return (
            f"their loss or gradient was not finite (mean loss {record.get('loss')}, grad_norm "
            f"{record.get('grad_norm')}): lower train.learning_rate (now {self.learning_rate:g})"
            " or check the data for NaN/inf"
        )

    def check(self, record: Mapping[str, float], *, steps: int) -> None:
        """``record``: a log line (``skipped`` is the window's count); ``steps``: its steps."""
        skipped = int(round(record.get("skipped", 0.0)))
        step = int(record["step"])
        self.skipped_in_a_row = self.skipped_in_a_row + steps if skipped >= steps else 0
        if skipped >= steps and self.skipped_in_a_row >= self.min_skipped_in_a_row:
            raise TrainingDivergedError(
                f"training stopped at step {step}: all of the last {self.skipped_in_a_row} "
                f"steps were skipped because {self._advice(record)}"
            )
        if 2 * skipped > steps and not self.warned:
            self.warned = True
            if self.verbose:
                print(
                    f"warning: {skipped} of the {steps} steps up to step {step} were skipped "
                    f"because {self._advice(record)}",
                    file=sys.stderr,
                )
