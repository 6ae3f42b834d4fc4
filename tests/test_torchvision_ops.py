"""experiments.bench.torchvision_ops: with torchvision installed beside a CPU-only torch,
diffusers and pytorch-fid's torchvision Inception import once it has run (skips without
torchvision or diffusers)."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None
                    or importlib.util.find_spec("diffusers") is None,
                    reason="needs torchvision and diffusers (requirements-bench.txt)")
def test_diffusers_and_the_inception_import_after_ensure_importable():
    # In a fresh process: without the fix, a CUDA-built torchvision beside the CPU torch
    # takes `import diffusers` down, naming the missing op; where torchvision's ops load
    # (a CUDA torch, or its CPU build) the plain import works.
    plain = python("from diffusers import UNet2DModel")
    assert plain.returncode == 0 or "torchvision::nms does not exist" in plain.stderr, \
        plain.stderr[-2000:]
    fixed = python(
        "from experiments.bench import torchvision_ops\n"
        "torchvision_ops.ensure_importable()\n"
        "import torchvision.models.inception as inception\n"
        "from diffusers import UNet2DModel\n"
        "torchvision_ops.ensure_importable()  # a second call is harmless\n"
        "print(inception.Inception3.__name__, UNet2DModel.__name__)\n")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.split() == ["Inception3", "UNet2DModel"]
