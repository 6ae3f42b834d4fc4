"""What a benchmark run records beside its rows (device, versions, settings, command) and
where it writes them (JSON, and the markdown table beside it)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from typing import Any

import jax


def environment() -> dict[str, Any]:
    """Device, versions, flags and command of this run, for the JSON (torch and diffusers
    versions when installed)."""
    import flax

    from experiments.bench import torchvision_ops

    torchvision_ops.ensure_importable()  # diffusers imports torchvision when installed
    try:
        import diffusers
        import torch
    except ImportError:  # the canny section needs neither
        diffusers = torch = None

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    cuda = torch is not None and torch.cuda.is_available()
    return dict(
        device=f"{jax.devices()[0].platform}: {cpu}", jax=jax.__version__, flax=flax.__version__,
        jax_device_kind=jax.devices()[0].device_kind, jax_device_count=jax.device_count(),
        torch=torch and torch.__version__, diffusers=diffusers and diffusers.__version__,
        torch_cuda_device=torch.cuda.get_device_name() if cuda else None,
        torch_cuda=torch and torch.version.cuda,
        torch_float32_matmul_precision=torch and torch.get_float32_matmul_precision(),
        torch_threads=torch and torch.get_num_threads(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", ""),
        XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", ""),  # see experiments/__init__.py
        command="python -m experiments.benchmark " + " ".join(sys.argv[1:]),
        load_average=os.getloadavg(),
    )


def write_results(path: str, result: dict[str, Any], table: str) -> None:
    """``path`` (JSON) and the markdown table beside it (.md)."""
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table + "\n")
