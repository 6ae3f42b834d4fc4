"""Classifier-free guidance: the formula, w = 0, and one batched inner call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance, samplers, schedules

NUM_CLASSES = 3
B = 4


def label_fn(x, t, cond):
    """A fake denoise_fn whose output depends on the label (null label = NUM_CLASSES).

    Add-then-multiply only: no transcendental or a*b+c pattern whose rounding could differ
    between eager and jitted (fused/FMA) code, so exact comparisons across them are fair."""
    scale = 1.0 + cond.astype(x.dtype)[:, None, None, None]
    return (x + 0.25 * t.astype(x.dtype)[:, None, None, None]) * scale


def inputs():
    x = jax.random.normal(jax.random.key(0), (B, 4, 4, 1))
    t = jnp.array([0, 3, 7, 9], jnp.int32)
    labels = jnp.array([0, 1, 2, 1], jnp.int32)
    return x, t, labels


def test_scale_zero_is_exactly_conditional():
    x, t, labels = inputs()
    expected = label_fn(x, t, labels)
    np.testing.assert_array_equal(
        guidance.cfg(label_fn, guidance_scale=0.0, num_classes=NUM_CLASSES)(x, t, labels), expected
    )
    # A traced w = 0 goes through the batched formula and is still exact.
    traced = jax.jit(
        lambda w: guidance.cfg(label_fn, guidance_scale=w, num_classes=NUM_CLASSES)(x, t, labels)
    )
    np.testing.assert_array_equal(traced(jnp.float32(0.0)), expected)


@pytest.mark.parametrize("w", [1.0, 3.5])
def test_scale_matches_formula(w):
    x, t, labels = inputs()
    out = guidance.cfg(label_fn, guidance_scale=w, num_classes=NUM_CLASSES)(x, t, labels)
    cond_out = label_fn(x, t, labels)
    null_out = label_fn(x, t, jnp.full((B,), NUM_CLASSES))
    np.testing.assert_allclose(out, (1 + w) * cond_out - w * null_out, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(out) - np.asarray(cond_out)).max() > 1e-2


def test_one_batched_inner_call():
    calls = []

    def recording_fn(x, t, cond):
        calls.append((x.shape, t.shape, cond.shape, np.asarray(cond)))
        return label_fn(x, t, cond)

    x, t, labels = inputs()
    guidance.cfg(recording_fn, guidance_scale=2.0, num_classes=NUM_CLASSES)(x, t, labels)
    assert len(calls) == 1
    x_shape, t_shape, cond_shape, cond = calls[0]
    assert x_shape == (2 * B, 4, 4, 1) and t_shape == (2 * B,) and cond_shape == (2 * B,)
    np.testing.assert_array_equal(cond, np.concatenate([labels, np.full(B, NUM_CLASSES)]))


def test_context_and_dict_conditions():
    x, t, _ = inputs()
    context = jax.random.normal(jax.random.key(1), (B, 5))
    hint = jax.random.normal(jax.random.key(2), (B, 4, 4, 1))

    def context_fn(x, t, cond):
        return x * cond["context"].sum(-1)[:, None, None, None] + cond["hint"]

    w = 2.0
    out = guidance.cfg(context_fn, guidance_scale=w)(x, t, {"context": context, "hint": hint})
    cond_out = context_fn(x, t, {"context": context, "hint": hint})
    null_out = context_fn(x, t, {"context": jnp.zeros_like(context), "hint": hint})  # hint kept
    np.testing.assert_allclose(out, (1 + w) * cond_out - w * null_out, rtol=1e-5, atol=1e-5)


def test_errors():
    x, t, labels = inputs()
    with pytest.raises(ValueError, match="condition"):
        guidance.cfg(label_fn, guidance_scale=1.0, num_classes=NUM_CLASSES)(x, t, None)
    with pytest.raises(ValueError, match="num_classes"):
        guidance.cfg(label_fn, guidance_scale=1.0)(x, t, labels)


def test_guided_sampler_traces_inner_fn_once():
    """Inside a sampler the guided fn is traced once (in the scan body) on a 2B batch."""
    batch_sizes = []

    def recording_fn(x, t, cond):
        batch_sizes.append(x.shape[0])
        return label_fn(x, t, cond)

    guided = guidance.cfg(recording_fn, guidance_scale=1.5, num_classes=NUM_CLASSES)
    _, _, labels = inputs()
    jax.make_jaxpr(
        lambda key: samplers.ddim(
            guided, schedules.linear(10), key, (B, 4, 4, 1), cond=labels, num_steps=5
        )
    )(jax.random.key(0))
    assert batch_sizes == [2 * B]
