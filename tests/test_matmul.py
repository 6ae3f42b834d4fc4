"""jaxdiff.matmul: a Dense matmul whose weight gradient is one row-major matmul on CPU."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import matmul


def _inputs(shape_x, n, dtype=jnp.float32):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape_x, dtype)
    w = jax.random.normal(kw, (shape_x[-1], n), dtype) * 0.1
    cotangent = jax.random.normal(kg, (*shape_x[:-1], n), dtype)
    return x, w, cotangent


@pytest.mark.parametrize("shape_x, n", [((6, 5, 8), 24), ((6, 5, 24), 8), ((7, 16), 16)])
def test_gradients_equal_plain_matmul(shape_x, n):
    # Both branches of _weight_grad (K <= N transposes x, K > N transposes dy), 2-D and 3-D x.
    x, w, cotangent = _inputs(shape_x, n)
    y, vjp = jax.vjp(matmul.dense_matmul, x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: x @ w, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(vjp(cotangent), vjp_ref(cotangent), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # dW by hand: sum over every token of the outer product x_m dy_m.
    dw = np.einsum("mk,mn->kn", np.asarray(x).reshape(-1, shape_x[-1]),
                   np.asarray(cotangent).reshape(-1, n))
    np.testing.assert_allclose(vjp(cotangent)[1], dw, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_dtypes():
    x, w, cotangent = _inputs((4, 8, 16), 32, jnp.bfloat16)
    dx, dw = jax.vjp(matmul.dense_matmul, x, w)[1](cotangent)
    dx_ref, dw_ref = jax.vjp(lambda x, w: x @ w, x, w)[1](cotangent)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(dw), np.float32(dw_ref), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.float32(dx), np.float32(dx_ref), rtol=2e-2, atol=2e-2)


def test_flax_dense_with_it_has_the_same_params_values_and_gradients():
    x, _, _ = _inputs((3, 10, 12), 1)
    plain = nn.Dense(20)
    ours = nn.Dense(20, dot_general=matmul.dot_general)
    params = plain.init(jax.random.key(1), x)
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(params)

    def loss(model):
        return lambda p, x: jnp.sum(jnp.tanh(model.apply(p, x)))

    got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    want = jax.grad(loss(plain), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_other_contractions_are_plain_dot_general():
    a = jax.random.normal(jax.random.key(2), (2, 3, 4))
    b = jax.random.normal(jax.random.key(3), (2, 4, 5))
    dims = (((2,), (1,)), ((0,), (0,)))  # batched: not a Dense contraction
    np.testing.assert_allclose(matmul.dot_general(a, b, dims),
                               jax.lax.dot_general(a, b, dims), rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda a, b: matmul.dot_general(a, b, dims))(a, b))
    assert "custom_vjp" not in jaxpr


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU weight-gradient layout")
def test_cpu_weight_gradient_is_a_row_major_matmul():
    # The point of the module: XLA's own gradient contracts dim 0 of its left operand (a
    # transposed GEMM that XLA:CPU runs off YNNPACK); ours contracts the last axis only.
    x, w, cotangent = _inputs((64, 32), 48)

    def grads(f):
        return jax.jit(lambda x, w: jax.vjp(f, x, w)[1](cotangent)).lower(x, w).compile()

    def transposed_dots(compiled):
        return re.findall(r"dot\([^)]*\), lhs_contracting_dims=\{0\}", compiled.as_text())

    assert transposed_dots(grads(lambda x, w: x @ w))
    assert not transposed_dots(grads(matmul.dense_matmul))
