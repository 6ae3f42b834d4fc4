"""jaxdiff.attention: the grouped CPU attention equals jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import attention


def _qkv(b, length, heads, d, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(k, (b, length, heads, d), dtype) for k in keys]


@pytest.mark.parametrize("shape", [(4, 64, 8, 8), (3, 49, 2, 16), (2, 256, 1, 32)])
def test_grouped_matches_xla_values_and_gradients(shape):
    q, k, v = _qkv(*shape)
    ref = jax.nn.dot_product_attention(q, k, v)
    # a tiny cache forces several groups (and the lax.map / checkpoint path)
    out = attention.grouped_attention(q, k, v, cache_elements=2 * shape[1] ** 2)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    grads = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    small_cache = 2 * shape[1] ** 2
    grouped = jax.grad(
        loss(lambda q, k, v: attention.grouped_attention(q, k, v, cache_elements=small_cache)),
        argnums=(0, 1, 2),
    )(q, k, v)
    for a, b in zip(grads, grouped, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_softmax_closed_form():
    # Keys k_j = 3 e_j: query i's logits are 3 q_i / sqrt(d), weights their softmax, exactly.
    d = 4
    queries = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 2.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0], [-3.0, 1.0, 1.0, 1.0]])
    values = np.arange(d * d, dtype=np.float64).reshape(d, d)
    logits = queries * 3.0 / np.sqrt(d)
    w = np.exp(logits - logits.max(1, keepdims=True))
    expected = (w / w.sum(1, keepdims=True)) @ values
    out = attention.grouped_attention(
        jnp.asarray(queries, jnp.float32).reshape(1, d, 1, d),
        (jnp.eye(d) * 3.0).reshape(1, d, 1, d),
        jnp.asarray(values, jnp.float32).reshape(1, d, 1, d),
    )
    np.testing.assert_allclose(out.reshape(d, d), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_softmax_in_float32():
    q, k, v = _qkv(2, 64, 2, 8, jnp.bfloat16)
    out = attention.grouped_attention(q, k, v)
    ref = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=3e-2)


def test_group_size_fits_cache_and_divides_rows():
    assert attention.group_size(256, 256) == 8  # 8 x 256 x 256 = 2**19 logits
    assert attention.group_size(256, 64) == 128
    assert attention.group_size(6, 256, cache_elements=4 * 256 * 256) == 3  # divisor of 6
    assert attention.group_size(5, 1024) == 1


def test_dispatch_and_bad_name():
    q, k, v = _qkv(2, 16, 2, 4)
    np.testing.assert_allclose(
        attention.dot_product_attention(q, k, v, implementation="xla"),
        attention.dot_product_attention(q, k, v, implementation="grouped"), atol=2e-6,
    )
    with pytest.raises(ValueError, match="auto|grouped|xla"):
        attention.dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="one shape"):
        attention.grouped_attention(q, k[:, :8], v[:, :8])
