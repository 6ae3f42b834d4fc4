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
``python -m experiments.benchmark --only train,dit --xla_options xla_cpu_use_onednn=false``
times the same programs without oneDNN beside them.

XLA cannot yet write a program with oneDNN kernels to JAX's persistent compilation cache
(``JAX_COMPILATION_CACHE_DIR``): it compiles such a program again in each process and warns
"Error writing persistent compilation cache entry ... thunk kind: onednn-fusion" at every
compile. Importing this module filters that one warning (other cache errors still show).

Other backends get no options. When the installed XLA does not know an option (they are
experimental flags and may be renamed), ``compiler_options`` drops it, with a warning,
rather than fail: the programs are only slower, never different.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

# The cost of CPU_OPTIONS' oneDNN fusions, explained in the docstring: not the user's to fix.
warnings.filterwarnings(
    "ignore", message=r"Error writing persistent compilation cache entry .*onednn",
    category=UserWarning)

CPU_OPTIONS: dict[str, str | bool] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


@functools.cache
def _accepted(backend: str, name: str, value: str | bool) -> bool:
    """Whether this XLA compiles a trivial program on ``backend`` with option name=value."""
    try:
        x = jax.device_put(jnp.zeros(2), jax.local_devices(backend=backend)[0])
        jax.jit(lambda x: x + 1).lower(x).compile(compiler_options={name: value})
    except Exception as error:  # noqa: BLE001  (XLA raises its own runtime error types)
        warnings.warn(f"XLA does not take {name}={value} ({error}); compiling without it",
                      stacklevel=3)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, str | bool]:
    """The options jaxdiff compiles with on ``backend`` (default: jax's default backend)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    return {k: v for k, v in CPU_OPTIONS.items() if _accepted(backend, k, v)}


def resolve(options: dict[str, str | bool] | None) -> dict[str, str | bool]:
    """``options`` as given, or ``compiler_options()`` of the default backend when None."""
    return compiler_options() if options is None else options


def jit(fn, *, compiler_options: dict[str, str | bool] | None = None, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``resolve(compiler_options)`` (None: the
    options above for the default backend; ``{}``: XLA's own)."""
    return jax.jit(fn, compiler_options=resolve(compiler_options) or None, **jit_kwargs)
