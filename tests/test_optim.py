"""The optimizer chain: EMA of params, learning-rate schedule, AdamW, checked by numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import optim


def _run(optimizer, params, grad_fn, steps):
    """Plain optimisation loop; returns the params and opt_state after each update."""
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    history = []
    for _ in range(steps):
        updates, state = update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        history.append((params, state))
    return history


def test_ema_copies_params_before_start_then_averages():
    decay, start = 0.8, 3
    target = {"w": jnp.array([3.0, -2.0]), "b": jnp.array(1.5)}
    params = {"w": jnp.array([0.0, 0.0]), "b": jnp.array(0.0)}
    # Quadratic 0.5 ||p - target||^2: gradient p - target.
    grad_fn = jax.grad(lambda p: 0.5 * sum(
        jnp.sum((p[k] - target[k]) ** 2) for k in p))
    optimizer = optim.make_optimizer(learning_rate=0.3, grad_clip=None, ema_decay=decay,
                                     ema_start_step=start)
    history = _run(optimizer, params, grad_fn, steps=7)
    ema = None
    for k, (p, state) in enumerate(history, start=1):
        got = optim.ema_params(state)
        p = jax.tree.map(np.asarray, p)
        if k <= start:  # updates 1..start see count 0..start-1 < start: a copy
            ema = p
            jax.tree.map(np.testing.assert_array_equal, got, p)
        else:
            ema = jax.tree.map(lambda e, x: decay * e + (1 - decay) * x, ema, p)
            jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6), got, ema)
    # The params moved, so the EMA really lags behind them at the end.
    assert not np.allclose(got["w"], history[-1][0]["w"], rtol=1e-3)


def test_standalone_ema_from_step_zero():
    optimizer = optax.chain(optax.sgd(0.5), optim.ema_of_params(0.9, start_step=0))
    params = jnp.array([1.0, 2.0])
    history = _run(optimizer, params, lambda p: jnp.array([1.0, -1.0]), steps=2)
    p1, p2 = history[0][0], history[1][0]
    np.testing.assert_allclose(p1, [0.5, 2.5])
    ema1 = 0.9 * np.array([1.0, 2.0]) + 0.1 * np.asarray(p1)  # ema_0 = initial params
    np.testing.assert_allclose(optim.ema_params(history[0][1]), ema1, rtol=1e-6)
    np.testing.assert_allclose(optim.ema_params(history[1][1]), 0.9 * ema1 + 0.1 * p2,
                               rtol=1e-6)


def test_ema_needs_params_and_is_found_only_when_present():
    ema = optim.ema_of_params(0.9)
    state = ema.init(jnp.ones(2))
    with pytest.raises(ValueError, match="params"):
        ema.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match="ema_of_params"):
        optim.ema_params(optax.adam(1e-3).init(jnp.ones(2)))


def test_warmup_and_cosine_schedule_values():
    warm = optim.make_lr_schedule(learning_rate=1e-3, warmup_steps=4)
    np.testing.assert_allclose([warm(k) for k in range(7)],
                               [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    cos = optim.make_lr_schedule(learning_rate=1e-3, warmup_steps=2, decay_steps=12)
    # Cosine over the 10 steps after warmup: half way (k = 7) is lr / 2, the end is 0.
    np.testing.assert_allclose([cos(1), cos(2), cos(7), cos(12), cos(20)],
                               [5e-4, 1e-3, 5e-4, 0, 0], atol=1e-9)
    assert float(optim.make_lr_schedule(learning_rate=2e-4)(1000)) == pytest.approx(2e-4)


def test_adamw_with_warmup_moves_params_by_lr():
    """With a constant gradient Adam's bias-corrected step is exactly lr * sign(g) (up to
    eps), so params trace the cumulative sum of the schedule; the lr of each update is in
    the state."""
    lr, warmup = 0.1, 4
    optimizer = optim.make_optimizer(learning_rate=lr, warmup_steps=warmup, ema_decay=0.5)
    g = jnp.array([2.0, -0.5])
    history = _run(optimizer, jnp.zeros(2), lambda p: g, steps=6)
    lrs = [lr * min(k, warmup) / warmup for k in range(6)]
    for k, (p, state) in enumerate(history):
        np.testing.assert_allclose(p, -np.sign(g) * sum(lrs[: k + 1]), rtol=1e-5, atol=1e-7)
        got_lr = optax.tree_utils.tree_get(state, "learning_rate",
                                           filtering=lambda _, v: isinstance(v, jax.Array))
        assert float(got_lr) == pytest.approx(lrs[k])


def test_weight_decay_and_clipping():
    # Zero gradient: AdamW's update is only the decoupled decay, -lr * wd * p.
    optimizer = optim.make_optimizer(learning_rate=0.1, weight_decay=0.5)
    (p, _), = _run(optimizer, jnp.array([2.0, -4.0]), lambda p: jnp.zeros(2), steps=1)
    np.testing.assert_allclose(p, [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6)
    # Clipping comes before Adam: a gradient of norm 10 then one of norm 0.5 must move the
    # params as Adam does on the clipped gradients (norm 1, then 0.5 unchanged).
    grads = [jnp.array([6.0, 8.0]), jnp.array([0.3, -0.4])]

    def feed(sequence):
        it = iter(sequence)
        return lambda p: next(it)

    (_, _), (p_chain, _) = _run(optim.make_optimizer(learning_rate=0.1, grad_clip=1.0),
                                jnp.zeros(2), feed(grads), steps=2)
    clipped = [grads[0] / 10.0, grads[1]]
    (_, _), (p_ref, _) = _run(optax.adam(0.1), jnp.zeros(2), feed(clipped), steps=2)
    (_, _), (p_unclipped, _) = _run(optax.adam(0.1), jnp.zeros(2), feed(grads), steps=2)
    np.testing.assert_allclose(p_chain, p_ref, rtol=1e-5)
    assert not np.allclose(p_ref, p_unclipped, rtol=1e-3)


def test_bad_options():
    with pytest.raises(ValueError, match="decay_steps"):
        optim.make_optimizer(learning_rate=1e-3, warmup_steps=10, decay_steps=5)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.make_optimizer(learning_rate=0.0)
    with pytest.raises(ValueError, match="decay"):
        optim.ema_of_params(1.5)
