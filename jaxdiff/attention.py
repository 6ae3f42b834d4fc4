"""Scaled dot-product attention, ``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017, eq. 1),
computed so that XLA:CPU runs it at cache speed.

``jax.nn.dot_product_attention`` materialises the whole (B, heads, L, L) logits, softmax and,
in the backward pass, their gradients: 67 MB each for the 16x16 attention of a batch-32
UNet, so the CPU streams them through memory five or six times per block. PyTorch's CPU
``scaled_dot_product_attention`` is a tiled (flash) kernel and was 2.4x faster there.
``dot_product_attention`` below gets most of that back in plain JAX: the heads (and, for
long sequences, the queries) are cut into blocks whose logits over the whole batch fit in
the L2 cache (about ``cache_elements`` floats), ``lax.map`` walks the blocks, and a custom
VJP keeps only each row's logsumexp and recomputes the block's softmax in the backward pass
instead of storing it, as FlashAttention does (Dao et al. 2022, sec. 3.1, "recomputation").
The batch is never cut, so a batch sharded over devices stays sharded. Same numbers as
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

# 2**21 floats = 8 MB of logits per block (the whole batch is in each block). Measured on
# 2 cores, fwd+bwd, one process interleaved, median of 7: (32, 256, 8, 8) 76 ms against
# 113 ms at 2**19 (the L2 of one core, but then 64-query blocks) and 82 ms for the earlier
# (example x head)-row groups; (32, 256, 6, 64) 158, 198 and 155 ms.
CACHE_ELEMENTS = 2**21


def _forward(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block of queries, (..., Lq, D) q against (..., L, D) k, v -> (out (..., Lq, D),
    logsumexp (..., Lq) float32).

    ``out = softmax(S) v`` with ``S = q k^T / sqrt(D)`` in float32; the row logsumexp is all
    the backward pass keeps of the softmax (FlashAttention, Dao et al. 2022, alg. 1-2).
    """
    logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    peak = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - peak)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v,
                     preferred_element_type=jnp.float32) / total
    return out.astype(v.dtype), (peak + jnp.log(total))[..., 0]


def _backward(q, k, v, out, lse, d_out):
    """One block of queries' (dq, and its float32 shares of dk, dv) from the saved
    logsumexp (Dao et al. 2022, alg. 4).

    With P = exp(S - lse): dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O)),
    dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D): one recomputed logits block and five
    matmuls, as FlashAttention's backward. dV and dK contract P's and dS's row axis; with
    jaxdiff's CPU options (oneDNN dots, ``jaxdiff.xla_options``) that transposed form runs
    as fast as the others, where YNNPACK's had made recomputing the logits transposed the
    cheaper way (README, "Performance").
    """
    scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
    f32 = dict(preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # (..., Lq)
    weights = jnp.exp(jnp.einsum("...qd,...kd->...qk", q, k, **f32) * scale - lse[..., None])
    d_weights = jnp.einsum("...qd,...kd->...qk", d_out, v, **f32)
    d_logits = weights * (d_weights - delta[..., None]) * scale
    dv = jnp.einsum("...qk,...qd->...kd", weights.astype(d_out.dtype), d_out, **f32)
    dk = jnp.einsum("...qk,...qd->...kd", d_logits.astype(q.dtype), q, **f32)
    dq = jnp.einsum("...qk,...kd->...qd", d_logits.astype(k.dtype), k, **f32)
    return dq.astype(q.dtype), dk, dv


# Layout of the blocked arrays: q (groups, query blocks, B, heads per group, Lq, D); k, v
# (groups, B, heads per group, L, D). ``lax.map`` walks groups (and, within a group, query
# blocks); the batch axis B is never folded into a walked axis, so a batch sharded over
# devices stays sharded: every device computes its own examples and nothing is gathered.


def _group_forward(qkv):
    q, k, v = qkv
    return jax.lax.map(lambda q_block: _forward(q_block, k, v), q)


@jax.custom_vjp
def _blocked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.lax.map(_group_forward, (q, k, v))[0]


def _blocked_fwd(q, k, v):
    out, lse = jax.lax.map(_group_forward, (q, k, v))
    return out, (q, k, v, out, lse)


def _group_backward(args):
    """One group: a scan over its query blocks, dq per block, dk and dv summed in float32."""
    q, k, v, out, lse, d_out = args

    def block(carry, xs):
        dq, dk, dv = _backward(xs[0], k, v, *xs[1:])
        return (carry[0] + dk, carry[1] + dv), dq

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(block, (zeros, zeros), (q, out, lse, d_out))
    return dq, dk.astype(k.dtype), dv.astype(v.dtype)


def _blocked_bwd(residuals, d_out):
    return jax.lax.map(_group_backward, (*residuals, d_out))


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def block_sizes(
    batch: int, heads: int, length: int, *, cache_elements: int = CACHE_ELEMENTS
) -> tuple[int, int]:
    """(heads per group, queries per block) for attention over ``batch`` examples: the most
    heads (a divisor of ``heads``) whose ``batch x heads x L x L`` logits fit in
    ``cache_elements``; where even one head's do not, one head and the most queries (a
    divisor of L) whose ``batch x queries x L`` logits fit; at least one of each."""
    per_head = batch * length * length
    if per_head <= cache_elements:
        fits = cache_elements // per_head
        return max(h for h in range(1, min(heads, fits) + 1) if heads % h == 0), length
    fits = max(1, cache_elements // (batch * length))
    return 1, max(n for n in range(1, min(length, fits) + 1) if length % n == 0)


def grouped_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, cache_elements: int = CACHE_ELEMENTS
) -> jax.Array:
    """Self-attention over (B, L, heads, D) q, k, v in cache-sized blocks of (head, query)
    rows, each block over the whole batch; the backward pass recomputes each block's logits
    from the saved logsumexp. Returns (B, L, heads, D).

    The batch is never split: ``block_sizes`` counts it whole, so a batch sharded over N
    devices works in blocks N times smaller than the cache on each device.
    """
    b, length, heads, d = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"grouped_attention wants q, k, v of one shape, got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    per_group, per_block = block_sizes(b, heads, length, cache_elements=cache_elements)
    groups, blocks = heads // per_group, length // per_block

    def to_groups(x):  # (B, L, H, D) -> (groups, B, per_group, L, D)
        return x.reshape(b, length, groups, per_group, d).transpose(2, 0, 3, 1, 4)

    q_blocks = to_groups(q).reshape(groups, b, per_group, blocks, per_block, d)
    q_blocks = q_blocks.transpose(0, 3, 1, 2, 4, 5)  # (groups, blocks, B, per_group, Lq, D)
    out = _blocked(q_blocks, to_groups(k), to_groups(v))
    # (groups, blocks, B, per_group, Lq, D) -> (B, L, H, D)
    return out.transpose(2, 1, 4, 0, 3, 5).reshape(b, length, heads, d)


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
