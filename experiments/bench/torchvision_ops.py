"""Makes torchvision importable beside a CPU-only torch (the benchmark and the twin tests).

pytorch-fid builds its network from torchvision's pure-Python ``torchvision.models.inception``,
so ``requirements-bench.txt`` installs torchvision. Its PyPI wheel is built against CUDA torch:
beside the CPU build of torch its compiled ops (``torchvision._C``) do not load, and
``import torchvision`` then stops while registering fake kernels for the ``nms``/``qnms`` ops
it could not find ("operator torchvision::nms does not exist"). diffusers imports torchvision
whenever it is installed, so that error takes ``import diffusers`` down with it.

``ensure_importable()`` imports torchvision and, when that happens, declares the two op
schemas (no kernel: nothing here calls them) and imports it again. Call it before the first
``import diffusers``; it does nothing where torch or torchvision is not installed, or where
torchvision imports as it is.
"""

from __future__ import annotations

import importlib.util
import sys

_LIBRARY = []  # a torch.library.Library's definitions live as long as the object


def ensure_importable() -> None:
    """Import torchvision if it is installed, declaring ``torchvision::nms`` and
    ``torchvision::qnms`` first where its compiled ops are missing (see the module docstring)."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.append(library)
        import torchvision  # noqa: F401
