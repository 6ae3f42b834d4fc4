"""jaxdiff's command-line programs (``python -m experiments.<name>``) and benchmarks.

Run as ``python -m experiments.<name>`` on a CPU, a program first re-executes itself once
with glibc malloc tunables that keep XLA's per-step scratch memory mapped (see
``experiments/runtime/host_memory.py``; ``JAXDIFF_MALLOC_TUNING=0`` turns this off). Importing
these modules (tests, notebooks) changes nothing.
"""

import sys as _sys


def _module_run() -> str | None:
    """``experiments.<name>`` when this interpreter was started as ``python -m`` it."""
    argv = getattr(_sys, "orig_argv", [])
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-m":
            return value if value.startswith("experiments.") else None
    return None


# host_memory re-executes itself from its own __main__ (importing it here first would make
# runpy warn about running an already imported module).
if _module_run() not in (None, "experiments.runtime.host_memory"):
    from experiments.runtime.host_memory import reexec_with_malloc_tuning

    reexec_with_malloc_tuning()
