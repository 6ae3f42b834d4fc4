"""Scaled dot-product attention, ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017, eq. 1),
computed so that XLA:CPU runs it at cache speed.

``jax.nn.dot_product_attention`` materialises the whole (B, heads, L, L) logits, softmax and,
in the backward pass, their gradients: 67 MB each for the 16x16 attention of a batch-32
UNet, so the CPU streams them through memory five or six times per block. PyTorch's CPU
``scaled_dot_product_attention`` is a tiled (flash) kernel and was 2.4x faster there.
``dot_product_attention`` below gets most of that back in plain JAX: the (batch x head)
rows are cut into groups whose logits fit in the L2 cache (about ``cache_elements`` floats),
``lax.map`` walks the groups, and a custom VJP keeps only each row's logsumexp and
recomputes the group's softmax in the backward pass instead of storing it, as
FlashAttention does (Dao et al. 2022, sec. 3.1, "recomputation"). Same numbers as
``jax.nn.dot_product_attention`` to float32 rounding (tests/test_attention.py). Fwd+bwd on
2 CPU cores, batch 32 (``python -m experiments.benchmark --only attention``; README,
"Performance"): one 16x16 block of the benchmark UNet (8 heads of 8) takes 92 ms with
``jax.nn.dot_product_attention``, 47 ms here and 64 ms in PyTorch's fused kernel; DiT-S/2's
(6 heads of 64) 115, 108 and 84 ms.

On GPUs and TPUs the fused kernels behind ``jax.nn.dot_product_attention`` (cuDNN flash
attention, XLA's fusions) are better, so ``implementation="auto"`` uses the grouped form on
the CPU backend only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# 2**19 floats = 2 MB of logits per group: the L2 of one server core, with room for q, k, v.
CACHE_ELEMENTS = 2**19


def _forward(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One group, (G, L, D) x3 -> (out (G, L, D), logsumexp (G, L) float32).

    ``out = softmax(S) v`` with ``S = q k^T / sqrt(D)`` in float32; the row logsumexp is all
    the backward pass keeps of the softmax (FlashAttention, Dao et al. 2022, alg. 1-2).
    """
    logits = jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    peak = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - peak)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("gqk,gkd->gqd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    return out.astype(v.dtype), (peak + jnp.log(total))[..., 0]


def _backward(q, k, v, out, lse, d_out):
    """One group's (dq, dk, dv) from the saved logsumexp (Dao et al. 2022, alg. 4).

    With P = exp(S - lse): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D): one recomputed (G, L, L) logits and five
    matmuls, as FlashAttention's backward. dV and dK contract P's and dS's row axis; with
    jaxdiff's CPU options (oneDNN dots, ``jaxdiff.xla_options``) that transposed form runs
    as fast as the others, where YNNPACK's had made recomputing the logits transposed the
    cheaper way (README, "Performance").
    """
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    f32 = dict(preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (G, Lq)
    weights = jnp.exp(jnp.einsum("gqd,gkd->gqk", q, k, **f32) * scale - lse[..., None])
    d_weights = jnp.einsum("gqd,gkd->gqk", d_out, v, **f32)
    d_logits = weights * (d_weights - delta[..., None]) * scale
    dv = jnp.einsum("gqk,gqd->gkd", weights.astype(d_out.dtype), d_out, **f32)
    dk = jnp.einsum("gqk,gqd->gkd", d_logits.astype(q.dtype), q, **f32)
    dq = jnp.einsum("gqk,gkd->gqd", d_logits.astype(k.dtype), k, **f32)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@jax.custom_vjp
def _grouped(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """(N, G, L, D) x3 -> (N, G, L, D): ``lax.map`` of ``_forward`` over the N groups."""
    return jax.lax.map(lambda qkv: _forward(*qkv)[0], (q, k, v))


def _grouped_fwd(q, k, v):
    out, lse = jax.lax.map(lambda qkv: _forward(*qkv), (q, k, v))
    return out, (q, k, v, out, lse)


def _grouped_bwd(residuals, d_out):
    return jax.lax.map(lambda args: _backward(*args), (*residuals, d_out))


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def group_size(rows: int, length: int, *, cache_elements: int = CACHE_ELEMENTS) -> int:
    """The largest divisor of ``rows`` (batch x heads) whose ``group x L x L`` logits fit in
    ``cache_elements``; at least 1."""
    target = max(1, cache_elements // (length * length))
    return max(g for g in range(1, min(rows, target) + 1) if rows % g == 0)


def grouped_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, cache_elements: int = CACHE_ELEMENTS
) -> jax.Array:
    """Self-attention over (B, L, heads, D) q, k, v in cache-sized groups of (example, head)
    rows; the backward pass recomputes each group's logits from the saved logsumexp.
    Returns (B, L, heads, D)."""
    b, length, heads, d = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"grouped_attention wants q, k, v of one shape, got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    rows = b * heads
    g = group_size(rows, length, cache_elements=cache_elements)

    def to_groups(x):  # (B, L, H, D) -> (rows / g, g, L, D)
        return x.transpose(0, 2, 1, 3).reshape(rows // g, g, length, d)

    out = _grouped(to_groups(q), to_groups(k), to_groups(v))
    return out.reshape(b, heads, length, d).transpose(0, 2, 1, 3)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str = "auto"
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v for (B, L, heads, D) inputs, as ``jax.nn.dot_product_attention``.

    ``implementation``: "grouped" (``grouped_attention``, best on CPUs), "xla"
    (``jax.nn.dot_product_attention``, cuDNN/XLA fused kernels on GPUs and TPUs), or "auto"
    (grouped on the CPU backend, xla elsewhere).
    """
    if implementation == "auto":
        implementation = "grouped" if jax.default_backend() == "cpu" else "xla"
    if implementation == "grouped":
        return grouped_attention(q, k, v)
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v)
    raise ValueError(f"attention implementation must be auto|grouped|xla, got {implementation!r}")
