"""Losses checked against closed forms and numpy recomputations with fake models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import losses, schedules

SCHEDULE = schedules.linear(100)


def _batch(n=8, size=8, channels=1, seed=0, **extra):
    rng = np.random.default_rng(seed)
    batch = {"image": rng.uniform(-1, 1, (n, size, size, channels)).astype(np.float32)}
    batch.update(extra)
    return batch


def _recorder():
    """A fake apply_fn (outputs 0.3 * x_t) that records each call's inputs, also under jit
    (arrays through jax.debug.callback, the rest at trace time)."""
    calls = []

    def record(x_t, t, cond):
        calls[-1].update(x_t=np.asarray(x_t), t=np.asarray(t),
                         cond=jax.tree.map(np.asarray, cond))

    def apply_fn(variables, x_t, t, cond, *, train, rngs):
        calls.append(dict(train=train, rngs=rngs, params=variables))
        jax.debug.callback(record, x_t, t, cond)
        return 0.3 * x_t

    return apply_fn, calls


def test_batch_cond():
    x = np.zeros((2, 4, 4, 1), np.float32)
    label, context, hint = np.array([1, 2]), np.ones((2, 3)), np.ones((2, 4, 4, 1))
    assert losses.batch_cond({"image": x}) is None
    assert losses.batch_cond({"image": x, "label": label}) is label
    assert losses.batch_cond({"image": x, "context": context}) is context
    both = losses.batch_cond({"image": x, "label": label, "context": context})
    assert set(both) == {"label", "context"}
    assert set(losses.batch_cond({"image": x, "hint": hint})) == {"hint"}


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_exact_target_gives_zero_loss(prediction):
    batch = _batch()
    x0 = jnp.asarray(batch["image"])

    def oracle(variables, x_t, t, cond, *, train, rngs):
        # Knows x0 (closure) so it can invert q_sample for the noise, then form the target.
        ab = SCHEDULE.alpha_bars[t][:, None, None, None]
        noise = (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        return schedules.target(SCHEDULE, x0, t, noise, prediction)

    loss_fn = losses.make_denoising_loss(oracle, SCHEDULE, prediction=prediction)
    loss, metrics = jax.jit(loss_fn)({}, batch, jax.random.key(0))
    assert float(loss) < 1e-9  # float32 round-off of inverting q_sample
    assert float(metrics[f"mse_{prediction}"]) == pytest.approx(float(loss))

    # A wrong model, computing in bf16, is far from zero (so the check above can fail) and
    # still gets a float32 loss.
    wrong = losses.make_denoising_loss(
        lambda v, x, t, c, **k: jnp.zeros(x.shape, jnp.bfloat16), SCHEDULE,
        prediction=prediction)
    wrong_loss, _ = wrong({}, batch, jax.random.key(0))
    assert wrong_loss.dtype == jnp.float32 and float(wrong_loss) > 0.1


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_loss_matches_numpy(prediction, weighting):
    batch = _batch(n=16)
    apply_fn, calls = _recorder()
    loss_fn = losses.make_denoising_loss(
        apply_fn, SCHEDULE, prediction=prediction, loss_weighting=weighting, min_snr_gamma=5.0
    )
    params = {"w": jnp.ones(2)}
    loss, _ = loss_fn(params, batch, jax.random.key(3))
    (call,) = calls
    assert call["train"] is True and "dropout" in call["rngs"]
    assert set(call["params"]) == {"params"}
    x_t, t = np.asarray(call["x_t"], np.float64), np.asarray(call["t"])
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < 100
    x0 = batch["image"].astype(np.float64)
    ab = np.asarray(SCHEDULE.alpha_bars, np.float64)[t][:, None, None, None]
    noise = (x_t - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    # x_t = q_sample(x0, t, eps) with eps ~ N(0, 1): check the recovered noise is standard.
    assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
    target = {"eps": noise, "x0": x0,
              "v": np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0}[prediction]
    per_example = ((0.3 * x_t - target) ** 2).mean(axis=(1, 2, 3))
    snr = ab[:, 0, 0, 0] / (1 - ab[:, 0, 0, 0])
    w = np.ones_like(snr)
    if weighting == "min_snr":
        w = np.minimum(snr, 5.0) / {"eps": snr, "x0": 1.0, "v": snr + 1}[prediction]
    np.testing.assert_allclose(float(loss), (w * per_example).mean(), rtol=2e-4)


def test_timesteps_are_uniform_over_all_T_indices():
    """t ~ U{0, ..., T-1}: index 0 (DDPM's t = 1) and T-1 both drawn, nothing outside."""
    apply_fn, calls = _recorder()
    losses.make_denoising_loss(apply_fn, SCHEDULE)({}, _batch(n=4000, size=1), jax.random.key(5))
    counts = np.bincount(calls[0]["t"], minlength=100)
    assert len(counts) == 100 and counts.min() > 0  # all 100 indices, none >= T
    assert abs(calls[0]["t"].mean() - 49.5) < 1.5  # sd of the mean: 28.9 / sqrt(4000) = 0.46


def _drop_fraction(batch, cond_of, num_classes=10):
    apply_fn, calls = _recorder()
    loss_fn = losses.make_denoising_loss(
        apply_fn, SCHEDULE, cond_drop_prob=0.1, num_classes=num_classes
    )
    loss_fn({}, batch, jax.random.key(7))
    return cond_of(calls[0]["cond"])


def test_label_drop_rate():
    n = 4000
    batch = _batch(n=n, size=2, label=np.full((n,), 3, np.int32))
    labels = _drop_fraction(batch, lambda c: np.asarray(c))
    assert set(np.unique(labels)) == {3, 10}  # kept, or the null label num_classes
    # 0.1 +- 4.2 sigma (sigma = sqrt(0.09 / 4000) = 0.0047)
    assert abs(np.mean(labels == 10) - 0.1) < 0.02


def test_dict_drop_is_per_example_and_keeps_hint():
    n = 4000
    batch = _batch(n=n, size=2, label=np.full((n,), 3, np.int32),
                   context=np.ones((n, 5), np.float32),
                   hint=np.ones((n, 2, 2, 1), np.float32))
    cond = _drop_fraction(batch, lambda c: {k: np.asarray(v) for k, v in c.items()})
    label_dropped = cond["label"] == 10
    context_dropped = np.all(cond["context"] == 0, axis=1)
    np.testing.assert_array_equal(label_dropped, context_dropped)
    assert abs(label_dropped.mean() - 0.1) < 0.02
    np.testing.assert_array_equal(cond["hint"], batch["hint"])


def test_no_drop_and_unconditional():
    batch = _batch(n=64, label=np.full((64,), 3, np.int32))
    apply_fn, calls = _recorder()
    no_drop = losses.make_denoising_loss(apply_fn, SCHEDULE, cond_drop_prob=0.0, num_classes=10)
    no_drop({}, batch, jax.random.key(0))
    np.testing.assert_array_equal(calls[0]["cond"], 3)
    losses.make_denoising_loss(apply_fn, SCHEDULE)({}, _batch(), jax.random.key(0))
    assert calls[1]["cond"] is None
    # Without num_classes the labels are not a condition (an unconditional model on a
    # labelled dataset); a context still is.
    losses.make_denoising_loss(apply_fn, SCHEDULE)({}, batch, jax.random.key(0))
    assert calls[2]["cond"] is None
    context = np.ones((64, 3), np.float32)
    losses.make_denoising_loss(apply_fn, SCHEDULE)(
        {}, dict(batch, context=context), jax.random.key(0))
    assert calls[3]["cond"].shape == (64, 3)
    losses.make_corruption_loss(apply_fn)({}, batch, jax.random.key(0))
    assert calls[4]["cond"] is None
    losses.make_corruption_loss(apply_fn, num_classes=10)({}, batch, jax.random.key(0))
    np.testing.assert_array_equal(calls[5]["cond"], 3)


def test_bad_options():
    with pytest.raises(ValueError, match="prediction"):
        losses.make_denoising_loss(None, SCHEDULE, prediction="score")
    with pytest.raises(ValueError, match="loss_weighting"):
        losses.make_denoising_loss(None, SCHEDULE, loss_weighting="snr")
    with pytest.raises(ValueError, match="image"):
        losses.make_denoising_loss(lambda *a, **k: 0, SCHEDULE)({}, {"x": 1}, jax.random.key(0))


def test_corruption_loss():
    batch = _batch(n=2000, size=4)
    apply_fn, calls = _recorder()
    loss, metrics = losses.make_corruption_loss(apply_fn)({}, batch, jax.random.key(1))
    (call,) = calls
    x = batch["image"].astype(np.float64)
    x_noisy, t = np.asarray(call["x_t"], np.float64), np.asarray(call["t"])
    assert call["cond"] is None and t.dtype == np.int32
    # Recover amount from t (= round(999 amount)) and check the noise implied by the mix.
    amount = t / 999.0
    assert 0 <= t.min() and t.max() <= 999 and abs(amount.mean() - 0.5) < 0.03
    mask = amount > 0.2  # where the rounding of t barely affects the recovery
    a = amount[mask][:, None, None, None]
    noise = (x_noisy[mask] - x[mask] * (1 - a)) / a
    assert np.abs(noise).max() < 1.01
    assert abs(noise.std() - np.sqrt(1 / 3)) < 0.02  # U[-1, 1] has std 1/sqrt(3)
    np.testing.assert_allclose(float(loss), ((0.3 * x_noisy - x) ** 2).mean(), rtol=1e-5)
    assert float(metrics["loss"]) == float(loss)


def test_corruption_loss_closed_form():
    """For the zero model the expected loss is E[x^2] exactly; for the identity model,
    E[a^2] E[(noise - x)^2] = 1/3 * (1/3 + 1/3) = 2/9 for x, noise ~ U[-1, 1]."""
    batch = _batch(n=4000, size=4, seed=1)
    zero = losses.make_corruption_loss(lambda v, x, t, c, **k: 0.0 * x)
    ident = losses.make_corruption_loss(lambda v, x, t, c, **k: x)
    loss0, _ = zero({}, batch, jax.random.key(2))
    np.testing.assert_allclose(float(loss0), (batch["image"].astype(np.float64) ** 2).mean(),
                               rtol=1e-5)
    loss1, _ = ident({}, batch, jax.random.key(2))
    assert abs(float(loss1) - 2 / 9) < 0.01
