"""Null conditions and classifier-free-guidance condition dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import conditioning as C


def test_null_cond_per_kind():
    labels = jnp.array([0, 3, 9])
    np.testing.assert_array_equal(C.null_cond(labels, num_classes=10), [10, 10, 10])
    ctx = jnp.ones((3, 5))
    np.testing.assert_array_equal(C.null_cond(ctx), np.zeros((3, 5)))
    hint = jnp.ones((3, 4, 4, 1))
    d = C.null_cond({"label": labels, "hint": hint}, num_classes=10)
    np.testing.assert_array_equal(d["label"], [10, 10, 10])
    np.testing.assert_array_equal(d["hint"], hint)  # hints are inputs, never nulled
    assert C.null_cond(None) is None
    with pytest.raises(ValueError, match="num_classes"):
        C.null_cond(labels)


def test_drop_cond_rate_and_whole_example():
    n = 20_000
    cond = {"label": jnp.zeros((n,), jnp.int32), "context": jnp.ones((n, 2))}
    dropped = C.drop_cond(jax.random.key(1), cond, prob=0.1, num_classes=10)
    null_label = np.asarray(dropped["label"]) == 10
    null_ctx = np.all(np.asarray(dropped["context"]) == 0, axis=1)
    assert null_label.mean() == pytest.approx(0.1, abs=0.01)
    np.testing.assert_array_equal(null_label, null_ctx)  # one draw per example
    assert C.drop_cond(jax.random.key(1), cond, prob=0.0) is cond


def test_concat_cond():
    a, b = jnp.array([1, 2]), jnp.array([3])
    np.testing.assert_array_equal(C.concat_cond(a, b), [1, 2, 3])
