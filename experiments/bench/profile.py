"""Where a benchmarked jax program spends its time: a ``jax.profiler`` trace of a few calls,
summed per device kernel (``python -m experiments.benchmark ... --profile_top 15``).

The trace is written in Perfetto's JSON (``create_perfetto_trace=True``), which needs no
TensorBoard plugin to read. On an accelerator the ops are the events of its '/device:...'
processes (one per CUDA kernel, memcpy, ...); on a CPU they are the events XLA's runtime
tags with an ``hlo_op``. Matrix-unit work (cuBLAS/cuBLASLt/cuDNN/CUTLASS gemm and conv
kernels, XLA:CPU dot libraries) is summed apart from the rest, which on a GPU is mostly XLA's
fused element-wise and reduction kernels: their share says whether a program is bound by
its matrix products or by the memory traffic around them.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

# Kernel names of matrix-unit work: cuBLAS(Lt) 'gemm'/'nvjet', CUTLASS/cuDNN 'xmma'/'conv',
# Hopper 'sm90_...wgmma', XLA:CPU's oneDNN/YNNPACK dot custom calls.
MATMUL = re.compile(r"gemm|nvjet|xmma|wgmma|cutlass|conv|cudnn|dot|onednn|matmul", re.I)


def trace_events(fn: Callable[[], Any], *, calls: int) -> list[dict[str, Any]]:
    """The op events ('X' phase) of ``calls`` blocking calls of ``fn`` under the profiler."""
    with tempfile.TemporaryDirectory(prefix="jaxdiff-profile-") as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(calls):
                fn()
        (path,) = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"),
                            recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") ==
               "process_name" and "/device:" in str(e.get("args", {}).get("name", ""))}
    if devices:
        return [e for e in events if e.get("ph") == "X" and e.get("pid") in devices]
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def summarize(events: list[dict[str, Any]], *, calls: int, top: int) -> dict[str, Any]:
    """Per-call milliseconds of the ``top`` kernels by total time, and the matmul share."""
    total: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    for e in events:
        total[e["name"]] += float(e.get("dur", 0.0))  # microseconds
        count[e["name"]] += 1
    busy = sum(total.values())
    matmul = sum(us for name, us in total.items() if MATMUL.search(name))
    ops = [dict(name=name, ms_per_call=us / calls / 1e3, share=us / busy if busy else 0.0,
                launches_per_call=count[name] / calls)
           for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]]
    return dict(busy_ms_per_call=busy / calls / 1e3, matmul_share=matmul / busy if busy else 0.0,
                kernels_per_call=sum(count.values()) / calls, top_ops=ops)


def profile(fn: Callable[[], Any], *, calls: int = 3, top: int = 15) -> dict[str, Any]:
    """``summarize(trace_events(fn))``: the busy time of ``calls`` calls of ``fn`` by op."""
    return summarize(trace_events(fn, calls=calls), calls=calls, top=top)


def format_profile(label: str, summary: dict[str, Any]) -> str:
    """A few lines for the log: busy time, matmul share, then the top ops."""
    lines = [f"profile {label}: {summary['busy_ms_per_call']:.2f} ms busy per call, "
             f"{summary['kernels_per_call']:.0f} kernels, matmul share "
             f"{summary['matmul_share']:.0%}"]
    lines += [f"  {op['ms_per_call']:8.3f} ms {op['share']:6.1%} x{op['launches_per_call']:.0f}"
              f"  {op['name'][:110]}" for op in summary["top_ops"]]
    return "\n".join(lines)
