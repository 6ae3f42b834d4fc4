"""The matmul of a Dense layer, ``y = x W``, with a weight gradient XLA:CPU runs fast.

Backpropagating ``y = x W`` (x: (M, K) tokens x features, W: (K, N)) needs
``dx = dy W^T`` and ``dW = x^T dy``. The second contracts the token axis M, which is the
leading (row) axis of both operands. XLA:CPU hands a dot to YNNPACK only when it contracts
the last axis of its left operand, so it runs ``dW`` through its generic dot emitter after
copying one operand into transposed form: in a DiT-S/2 train step (batch 32, 2 CPU cores)
these weight gradients took about 1.2 s of the 10.7 s step (profile: ~50 ms gaps before each
block's gradient reduction, HLO ``dot(..., lhs_contracting_dims={0})``), where PyTorch's
``mm`` reads a transposed operand in place.

``dot_general`` below is ``lax.dot_general`` with a custom VJP that writes ``dW`` as a
row-major product: it transposes the smaller of ``x`` (M, K) and ``dy`` (M, N) itself and
keeps the copy behind ``lax.optimization_barrier``, so XLA cannot fold the transpose back
into the dot. ``(x^T) dy`` or ``((dy^T) x)^T``: the same numbers, and one row-major matmul.
It still pays with the oneDNN dots that ``jaxdiff.xla_options`` now selects on CPUs: a
DiT-S/2 train step (batch 32, one process, interleaved, median of 4) took 7.01 s with it and
7.49 s with plain ``lax.dot_general`` (README, "Performance"). Flax takes it as
``nn.Dense(..., dot_general=matmul.dot_general)``; on GPUs and TPUs (cuBLAS and the TPU
compiler read transposed operands natively) it is plain ``lax.dot_general``.
"""

from __future__ import annotations

import jax
from jax import lax


def _weight_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    """``x^T dy`` for x (M, K), dy (M, N) as one row-major (NN) matmul: the smaller operand
    is transposed explicitly, behind an optimization barrier. Returns (K, N)."""
    if x.shape[1] <= dy.shape[1]:
        return lax.optimization_barrier(x.T) @ dy
    return (lax.optimization_barrier(dy.T) @ x).T


@jax.custom_vjp
def dense_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x W`` for x (..., K) and a 2-D kernel W (K, N): (..., N). Gradients equal those of
    ``x @ w``; the weight gradient is computed by :func:`_weight_grad`."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _dense_matmul_fwd(x, w):
    return dense_matmul(x, w), (x, w)


def _dense_matmul_bwd(residuals, dy):
    x, w = residuals
    dx = lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))  # dy W^T: contracts N
    dw = _weight_grad(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for Flax's ``nn.Dense(dot_general=...)``.

    A Dense layer's contraction (last axis of the input with the first of a 2-D kernel, no
    batch axes, no precision or result-type override) on the CPU backend goes through
    :func:`dense_matmul`; anything else, or another backend, is ``lax.dot_general``.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    dense = (
        tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
        and rhs.ndim == 2 and not lhs_batch and not rhs_batch
        and precision is None and preferred_element_type is None
    )
    if dense and jax.default_backend() == "cpu":
        return dense_matmul(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
