"""Model FLOPs and MFU for the benchmark's GPU sections.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM", appendix B) is the model FLOPs a
step needs, counted analytically, divided by the step's time and the chip's peak: work the
hardware wastes (recomputation, padding, idle time) lowers it, unlike a hardware FLOP count.
A train step's model FLOPs are 3x the forward's matmul FLOPs (the backward pass computes two
matmuls per forward one: gradients of inputs and of weights; Kaplan et al. 2020, sec. 2.1).
A multiply-add is 2 FLOPs; element-wise work (norms, softmax, activations) is not counted.

``dit_forward_flops`` is the closed form for ``jaxdiff.models.dit.DiT``; ``matmul_flops``
counts the same thing exactly from any function's jaxpr (every ``dot_general`` and
convolution, scans multiplied by their length), which tests the closed form and counts the
UNet, whose convolutions have no short formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets.
# Keys are substrings of ``jax.Device.device_kind`` / ``torch.cuda.get_device_name()``;
# the longest matching key wins ("H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,       # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,        # AWS A10G: 70 dense (datasheet lists sparse 140)
    "L40S": 362.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


def peak_flops(device_kind: str, *, override_tflops: float | None = None) -> float | None:
    """The chip's dense bf16 peak in FLOP/s: ``override_tflops`` when given, else the longest
    key of ``PEAK_BF16_TFLOPS`` found in ``device_kind``; None when unknown (e.g. a CPU)."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    matches = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_kind.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] * 1e12 if matches else None


def dit_forward_flops(
    *,
    depth: int,
    hidden_size: int,
    patch_size: int,
    image_size: int,
    in_channels: int,
    out_channels: int | None = None,
    mlp_ratio: float = 4.0,
    frequency_embedding_size: int = 256,
    context_dim: int | None = None,
) -> int:
    """Matmul FLOPs of one image through ``DiT`` (Peebles & Xie 2023, fig. 3), forward.

    With N = (image_size / p)^2 tokens, D = hidden_size, M = int(D * mlp_ratio), F the
    frequency features, C and C' the in/out channels:

        patch embed     2 N (p^2 C) D
        t-MLP           2 (F D + D D)              (+ 2 context_dim D with a context)
        per block       2 (6 D^2)                  adaLN-Zero modulation of c
                      + 2 N D (3 D)                qkv
                      + 2 N^2 D + 2 N^2 D          q k^T and softmax(.) v over all heads
                      + 2 N D^2                    output projection
                      + 2 N D M + 2 N M D          MLP
        final layer     2 (2 D^2) + 2 N D (p^2 C') adaLN modulation, linear head

    The label embedding is a table lookup (no FLOPs).
    """
    p, d = patch_size, hidden_size
    if image_size % p:
        raise ValueError(f"image_size={image_size} must be divisible by patch_size={p}")
    n = (image_size // p) ** 2
    m = int(d * mlp_ratio)
    c_out = out_channels or in_channels
    embed = 2 * n * p * p * in_channels * d + 2 * (frequency_embedding_size * d + d * d)
    if context_dim:
        embed += 2 * context_dim * d
    block = 2 * 6 * d * d + 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * m
    final = 2 * 2 * d * d + 2 * n * d * p * p * c_out
    return embed + depth * block + final


def train_step_flops(forward_flops: float) -> float:
    """Model FLOPs of a train step: forward + backward = 3 x forward (Kaplan et al. 2020)."""
    return 3 * forward_flops


def mfu(*, flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    """flops_per_step / seconds_per_step / peak; None when the peak is unknown."""
    if peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def _eqn_flops(eqn: Any) -> int:
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.shape
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * math.prod(out) * math.prod(lhs[i] for i in lhs_contract)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, spatial...)
        per_output = rhs[rhs_spec[1]] * math.prod(rhs[i] for i in rhs_spec[2:])
        return 2 * math.prod(out) * per_output
    return 0


def _sub_jaxprs(value: Any):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_matmul_flops(jaxpr: Any) -> int:
    """Sum of ``dot_general`` and convolution FLOPs in ``jaxpr`` and its sub-jaxprs (a scan's
    body times its length; a cond's costliest branch; a while body once)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        if eqn.primitive.name == "cond":
            total += max(jaxpr_matmul_flops(b.jaxpr) for b in eqn.params["branches"])
            continue
        inner = sum(jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
        total += inner * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    return total


def matmul_flops(fn: Callable, *args: Any) -> int:
    """Matmul + convolution FLOPs of ``fn(*args)`` as traced (no compile, any backend)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
