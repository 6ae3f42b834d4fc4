"""jaxdiff.attention: the grouped CPU attention equals jax.nn.dot_product_attention."""

import os
import pathlib
import subprocess
import sys

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


def test_block_sizes_fit_cache_and_divide():
    assert attention.block_sizes(32, 8, 256) == (1, 256)  # 32 x 256 x 256 = 2**21
    assert attention.block_sizes(1, 8, 256) == (8, 256)
    assert attention.block_sizes(32, 8, 256, cache_elements=2**19) == (1, 64)  # 32 x 64 x 256
    assert attention.block_sizes(4, 6, 64) == (6, 64)
    assert attention.block_sizes(2, 6, 256, cache_elements=4 * 256 * 256) == (2, 256)
    # One head too big: queries in blocks, the largest divisor of L that fits.
    assert attention.block_sizes(32, 8, 1024) == (1, 64)  # 32 x 64 x 1024 = 2**21
    assert attention.block_sizes(5, 2, 1000, cache_elements=5 * 1000 * 7) == (1, 5)
    assert attention.block_sizes(64, 1, 4096, cache_elements=10) == (1, 1)


@pytest.mark.parametrize("shape,cache", [((2, 64, 4, 8), 2 * 64 * 16), ((3, 49, 2, 16), 3 * 49)])
def test_query_blocks_match_xla_values_and_gradients(shape, cache):
    """Caches too small for one head's logits: queries in blocks, dk and dv summed over them."""
    q, k, v = _qkv(*shape)
    per_group, per_block = attention.block_sizes(shape[0], shape[2], shape[1],
                                                 cache_elements=cache)
    assert per_group == 1 and per_block < shape[1]
    blocked = lambda q, k, v: attention.grouped_attention(q, k, v, cache_elements=cache)
    np.testing.assert_allclose(blocked(q, k, v), jax.nn.dot_product_attention(q, k, v),
                               atol=2e-6, rtol=1e-5)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    grads = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(grads, jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


def test_bfloat16_gradients():
    q, k, v = _qkv(2, 64, 4, 8, jnp.bfloat16)

    def grads(fn, *args):
        return jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v).astype(jnp.float32))),
                        argnums=(0, 1, 2))(*args)

    ref = grads(jax.nn.dot_product_attention, *(x.astype(jnp.float32) for x in (q, k, v)))
    small = lambda q, k, v: attention.grouped_attention(q, k, v, cache_elements=2 * 64 * 16)
    for a, b in zip(ref, grads(small, q, k, v), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(b, np.float32), a, atol=3e-2, rtol=3e-2)


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxdiff import attention, train
mesh = train.make_mesh()
assert mesh.size == 4
keys = jax.random.split(jax.random.key(0), 3)
q, k, v = [jax.random.normal(key, (8, 256, 4, 16)) for key in keys]
sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v)]
loss = lambda q, k, v: jnp.sum(jnp.sin(attention.grouped_attention(q, k, v)))
for fn in (jax.jit(attention.grouped_attention), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))):
    hlo = fn.lower(*sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo, hlo
    for a, b in zip(jax.tree.leaves(fn(*sharded)), jax.tree.leaves(fn(q, k, v)), strict=True):
        assert a.sharding.spec[0] == "data", a.sharding  # each device keeps its quarter
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_batch_sharded_over_devices_is_never_gathered():
    """Forward and gradient on a batch split over 4 devices compile without any all-gather
    and equal the one-device values."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                          text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


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
