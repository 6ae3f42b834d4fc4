"""XLA compiler options for jaxdiff's jit-compiled programs, per backend.

On the CPU, XLA hands matmuls, convolutions, reductions and element-wise chains to YNNPACK
("ynn fusions") by default. For our UNets its convolutions ran about 2x slower than
XLA's own (a 3x3 conv 96->32 at 32x32, batch 32: 21 ms, 43 GFLOP/s on 2 cores, where
oneDNN in PyTorch takes ~10 ms), while its dots and reductions are the fast choice. So on
the CPU the train steps and samplers are compiled with YNNPACK limited to single dots and
reductions (``xla_cpu_experimental_ynn_fusion_type``): the UNet train step of
``experiments.benchmark`` went from 0.80x to 0.94x PyTorch in one process, with the
default compile and this one interleaved (README, "Performance").

Other backends get no options. When the installed XLA does not know an option (it is an
experimental flag and may be renamed), ``compiler_options`` drops it, with a warning,
rather than fail: the programs are only slower, never different.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    ),
}


@functools.cache
def _accepted(backend: str, name: str, value: str) -> bool:
    """Whether this XLA compiles a trivial program on ``backend`` with option name=value."""
    try:
        x = jax.device_put(jnp.zeros(2), jax.local_devices(backend=backend)[0])
        jax.jit(lambda x: x + 1).lower(x).compile(compiler_options={name: value})
    except Exception as error:  # noqa: BLE001  (XLA raises its own runtime error types)
        warnings.warn(f"XLA does not take {name}={value} ({error}); compiling without it",
                      stacklevel=3)
        return False
    return True


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options jaxdiff compiles with on ``backend`` (default: jax's default backend)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    return {k: v for k, v in CPU_OPTIONS.items() if _accepted(backend, k, v)}


def resolve(options: dict[str, str] | None) -> dict[str, str]:
    """``options`` as given, or ``compiler_options()`` of the default backend when None."""
    return compiler_options() if options is None else options


def jit(fn, *, compiler_options: dict[str, str] | None = None, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``resolve(compiler_options)`` (None: the
    options above for the default backend; ``{}``: XLA's own)."""
    return jax.jit(fn, compiler_options=resolve(compiler_options) or None, **jit_kwargs)
