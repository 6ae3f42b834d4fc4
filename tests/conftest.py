"""Shared test fixtures. Tests never touch the network.

One persistent XLA compilation cache serves the whole test run: a program that
several tests compile is compiled once. It is set through JAX's environment variables
before anything imports jax, so the subprocesses that the CLI, crash, multihost and README
tests start, and the notebook kernels, share it too. The suite compiles with XLA's default
options (``JAXDIFF_XLA_OPTIONS=default``, unless set otherwise): XLA cannot write the oneDNN
programs of jaxdiff's CPU options to the cache, so with them every subprocess compiled its
train step and samplers again. The options pick kernels and never change what a program
computes; ``tests/test_xla_options.py`` and ``tests/test_benchmark.py`` turn them on and
check that. The cache holds only compiled programs, keyed on the program, its compile
options and the jax/XLA versions: what a test computes does not change. A
JAX_COMPILATION_CACHE_DIR already set is used as it is (a developer may keep one between runs).

The suite runs its files in parallel worker processes (pytest-xdist, ``addopts`` in
pyproject.toml): much of a test's time is XLA compiling, which keeps one core busy, so one
process left the second core of a 2-core machine mostly idle (25 min in one process, 17
in two).
"""

import os
import pathlib
import shutil
import tempfile


def platforms_for_tests(platforms: str | None) -> str:
    """JAX_PLATFORMS for the tests: the CPU by default; an accelerator run
    (``JAX_PLATFORMS=cuda``) keeps the CPU beside it, which ``jax.debug.callback`` needs to
    hand arrays to Python (on an H200 with 'cuda' alone every test that records through it
    stopped with "Unknown backend cpu")."""
    if not platforms:
        return "cpu"
    names = [p.strip() for p in platforms.split(",") if p.strip()]
    return ",".join(names if "cpu" in names else [*names, "cpu"])


os.environ["JAX_PLATFORMS"] = platforms_for_tests(os.environ.get("JAX_PLATFORMS"))
# The tests compare float32 arithmetic with float32/float64 oracles (numpy, closed forms,
# diffusers' PyTorch). On GPUs JAX's default precision lets float32 matmuls and convolutions
# round their inputs to TF32 (10 mantissa bits, ~5e-4 relative): on an H200 that moved the
# attention, the UNet-vs-diffusers and the remat comparisons by 2e-4 to 1.2e-3. "highest" is
# float32 everywhere; CPUs compute float32 dots in float32 either way.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdiff-tests-xla-")
# The docstring says why: cacheable programs, the same numbers.
os.environ.setdefault("JAXDIFF_XLA_OPTIONS", "default")
# Programs that compile faster than this are not worth a file (jnp's eager ops).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from experiments.bench import torchvision_ops  # noqa: E402

# torchvision (requirements-bench.txt, for pytorch-fid) fails to import beside a CPU-only torch
# and takes `import diffusers` with it, unless made importable first (its module docstring).
torchvision_ops.ensure_importable()

# Worker processes for `-n auto`: one per core, at most 4 (each holds a few GB at its peak,
# with the CLI subprocesses some tests start).
MAX_WORKERS = 4

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def pytest_xdist_auto_num_workers(config):
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def jaxdiff_xla_options(monkeypatch):
    """jaxdiff's own CPU compile options on (the suite runs with XLA's defaults, see above)."""
    monkeypatch.delenv("JAXDIFF_XLA_OPTIONS", raising=False)


@pytest.fixture
def mnist_dir() -> pathlib.Path:
    """The real MNIST test split in ../shared/data/mnist; skips when it is absent."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test split not found at {MNIST_DIR}")
    return MNIST_DIR
