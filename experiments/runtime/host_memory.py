"""Keep XLA:CPU's per-step scratch memory mapped between steps (glibc malloc tunables).

XLA:CPU runs a compiled program in one scratch ("temp") buffer that it ``malloc``s at every
call and frees at its end: 5.4 GB for the DiT-S/2 train step at batch 32
(``compiled.memory_analysis().temp_size_in_bytes``). glibc serves a block that large with a
fresh ``mmap`` and returns it with ``munmap``, so every step page-faults 5.4 GB back in
(``strace``: one ``mmap(NULL, 5388673024, ...)`` and ``munmap`` per step; ``getrusage``:
1.38 million minor faults and 2.9 s of system time per 10.7 s step on 2 CPU cores, where
PyTorch's step has 0.34 million and 0.6 s).

The fix needs no change to XLA: glibc's tunables, read once when a process starts,
(``GLIBC_TUNABLES``) keep freed memory in the heap for the next step, backed by huge pages:

* ``glibc.malloc.mmap_max=0`` and ``glibc.malloc.arena_max=1``: large blocks come from the
  main heap, not from per-call ``mmap`` (XLA's worker threads would otherwise each get an
  arena that ``mmap``s them anyway);
* ``glibc.malloc.trim_threshold=64 GiB``: a freed block is kept, not given back to the OS;
* ``glibc.malloc.hugetlb=1``: the heap is ``madvise``d for transparent huge pages.

Measured on the same DiT-S/2 step: 1,381,206 -> 965 minor page faults per step (huge
pages); the first 3-4 steps still grow the heap (one ~15 s step among 8.5-8.9 s ones), then
a step runs at 8.5-8.9 s against 10.6-10.9 s without the tunables; README, "Performance",
has the benchmark. The price is that the process keeps its peak heap until it exits, as a
GPU process keeps its preallocated memory.

Tunables can only be set before a process starts, so ``python -m experiments.<cli>``
re-executes itself once with them (``experiments/__init__.py`` calls
:func:`reexec_with_malloc_tuning` before anything else is imported). It does so only on
Linux with glibc, only when no GPU/TPU plugin for JAX is installed (or ``JAX_PLATFORMS``
starts with ``cpu``), and never when ``JAXDIFF_MALLOC_TUNING`` is 0, false, no or off.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.trim_threshold": str(64 * 2**30),
}
OPT_OUT = "JAXDIFF_MALLOC_TUNING"
_OFF = ("0", "false", "no", "off")  # values of OPT_OUT that turn the tunables off
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def tuned_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with :data:`TUNABLES` added to ``GLIBC_TUNABLES`` (a tunable the user set
    keeps its value), or None when every one is already there."""
    given = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    names = {t.split("=", 1)[0] for t in given}
    missing = [f"{k}={v}" for k, v in TUNABLES.items() if k not in names]
    if not missing:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(given + missing)}


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process should run with the tunables: Linux, glibc, JAX on the CPU, and
    not opted out with ``JAXDIFF_MALLOC_TUNING=0``."""
    if environ.get(OPT_OUT, "1").strip().lower() in _OFF or sys.platform != "linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def reexec_with_malloc_tuning() -> None:
    """Replace this process by itself, same command line, with :data:`TUNABLES` set; a no-op
    when they are set already or not :func:`wanted`. Call it before JAX starts its threads."""
    if not wanted():
        return
    env = tuned_environ(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # exec refused (sandbox, odd interpreter): run on without the tunables
        pass


def _faults_per_call(calls: int = 5) -> float:
    """Minor page faults per call of a jitted program with a 64 MB scratch buffer (the
    sines, a matmul operand) and a 64 MB result."""
    import resource

    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda x: jnp.sin(x).reshape(-1, 8) @ jnp.eye(8))
    x = jnp.linspace(0.0, 1.0, 2**24)
    fn(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn(x).block_until_ready()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


if __name__ == "__main__":
    # python -m experiments.runtime.host_memory: the tunables this process runs with, and what they
    # do to a program's page faults (JAXDIFF_MALLOC_TUNING=0 for the comparison).
    reexec_with_malloc_tuning()
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}")
    print(f"minor page faults per call: {_faults_per_call():.0f}")
