"""XLA compiler options for jaxdiff's jit-compiled programs, per backend.

On the CPU, XLA hands matmuls, convolutions, reductions and element-wise chains to YNNPACK
("ynn fusions") by default. Two of those choices are slow for our models on the 2-core
benchmark box (README, "Performance"):

* YNNPACK's convolutions ran about 2x slower than XLA's own (a 3x3 conv 96->32 at 32x32,
  batch 32: 21 ms, 43 GFLOP/s, where oneDNN in PyTorch takes ~10 ms).
* YNNPACK's dots ran a (8192, 1536) x (1536, 384) matmul at 180 GFLOP/s where oneDNN's ran
  at 220, and attention's batches of (256, 64) x (64, 256) products at 70-85 GFLOP/s where
  oneDNN's ran at 105-128 (one process, each dot alone, median of 7 calls).

So on the CPU the train steps and samplers are compiled with every dot handed to oneDNN
(``xla_cpu_use_onednn``, ``xla_cpu_experimental_onednn_fusion_type``: single dots) and
YNNPACK kept for reductions only (GroupNorm's and LayerNorm's statistics; without them the
UNet step is 25% slower), convolutions and element-wise fusions staying XLA's. One process,
interleaved with PyTorch, batch 32: the UNet train step ran at 0.90x PyTorch with XLA's
defaults, 1.02x with YNNPACK for dots and reductions (the previous options) and 1.14x with
these (median of 3); DiT-S/2 at 0.89x with the previous options and 1.04x with these
(median of 4).
On 2 Intel Xeon cores, two runs on a quiet machine: the UNet and DiT-S/2 train steps ran
1.18-1.66x faster than with XLA's defaults, DDIM/DDPM sampling within 2% (docs/performance.md,
"What jaxdiff's CPU compile options buy").
``python -m experiments.benchmark --only train,dit --xla_options xla_cpu_use_onednn=false``
times the same programs without oneDNN beside them.

XLA cannot yet write a program with oneDNN kernels to JAX's persistent compilation cache
(``JAX_COMPILATION_CACHE_DIR``): it compiles such a program again in each process and warns
"Error writing persistent compilation cache entry ... thunk kind: onednn-fusion" at every
compile. Importing this module filters that one warning (other cache errors still show).

Other backends get no options. Before the first CPU compile, a child process compiles and
runs a dot and a convolution with the options, once per CPU model, jaxlib version and
option set (remembered in ``~/.cache/jaxdiff/xla_cpu_options.json``): an option the
installed XLA does not know (they are experimental and may be renamed) is dropped with a
warning, and options that crash the child (a kernel library's illegal instruction, which no
``try`` catches) are all dropped with one warning line. The programs are only slower, never
different. ``JAXDIFF_XLA_OPTIONS=default`` compiles with XLA's own options.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys
import warnings

import jax

# The cost of CPU_OPTIONS' oneDNN fusions, explained in the docstring: not the user's to fix.
warnings.filterwarnings(
    "ignore", message=r"Error writing persistent compilation cache entry .*onednn",
    category=UserWarning)

CPU_OPTIONS: dict[str, str | bool] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


# Turns the options off: JAXDIFF_XLA_OPTIONS=default compiles with XLA's own.
ENV = "JAXDIFF_XLA_OPTIONS"

# Run in a child process: a dot and a convolution compiled and executed with each option
# alone, then with every accepted one together; prints the accepted options as JSON. An
# option that kills the process (an illegal instruction in a kernel library) kills only it.
_PROBE = """
import json, sys
import jax, jax.numpy as jnp
options = json.loads(sys.argv[1])
x = jnp.ones((64, 64)); image = jnp.ones((2, 8, 8, 4)); kernel = jnp.ones((3, 3, 4, 4))

def run(opts):
    f = lambda a, b, k: jnp.tanh(a @ b).sum() + jax.lax.conv_general_dilated(
        b[None, :8, :8, None].repeat(4, -1) * image, k, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
    jax.block_until_ready(jax.jit(f).lower(x, x, kernel).compile(compiler_options=opts)(
        x, x, kernel))

accepted = {}
for name, value in options.items():
    try:
        run({name: value})
        accepted[name] = value
    except Exception as error:
        print(f"XLA does not take {name}={value} ({' '.join(str(error).split())[:200]})",
              file=sys.stderr)
run(accepted)
print(json.dumps(accepted))
"""


def _machine() -> str:
    """The CPU model and jaxlib version: what decides whether the options run."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} | jaxlib {_jaxlib_version()}"


def _jaxlib_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return jax.__version__


def _cache_file() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "jaxdiff" / "xla_cpu_options.json"


@functools.cache
def _probed(options_json: str) -> dict[str, str | bool]:
    """The options of ``options_json`` that this machine's XLA compiles and runs, from a
    child process (``_PROBE``), remembered per CPU model, jaxlib version and option set."""
    key = f"{_machine()} | {options_json}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, options_json], env=env,
                              capture_output=True, text=True, timeout=300)
        accepted = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 \
            else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        proc, accepted = None, None
    if accepted is None:
        how = "timed out" if proc is None else f"exit status {proc.returncode}"
        warnings.warn(f"jaxdiff's XLA CPU options failed a test program ({how}); compiling "
                      f"with XLA's defaults (set {ENV}=default to skip the test)", stacklevel=3)
        accepted = {}
    else:
        for line in proc.stderr.splitlines():
            if line.startswith("XLA does not take"):
                warnings.warn(f"{line}; compiling without it", stacklevel=3)
    known[key] = accepted
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    except OSError:
        pass  # a read-only home: probed again in the next process
    return accepted


def compiler_options(backend: str | None = None) -> dict[str, str | bool]:
    """The options jaxdiff compiles with on ``backend`` (default: jax's default backend):
    on the CPU, those of ``CPU_OPTIONS`` a child process showed to compile and run on this
    machine (``_probed``), none when ``JAXDIFF_XLA_OPTIONS=default``; elsewhere none."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or os.environ.get(ENV, "").lower() in ("default", "off", "0"):
        return {}
    return dict(_probed(json.dumps(CPU_OPTIONS, sort_keys=True)))


def resolve(options: dict[str, str | bool] | None) -> dict[str, str | bool]:
    """``options`` as given, or ``compiler_options()`` of the default backend when None."""
    return compiler_options() if options is None else options


def jit(fn, *, compiler_options: dict[str, str | bool] | None = None, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``resolve(compiler_options)`` (None: the
    options above for the default backend; ``{}``: XLA's own)."""
    return jax.jit(fn, compiler_options=resolve(compiler_options) or None, **jit_kwargs)
