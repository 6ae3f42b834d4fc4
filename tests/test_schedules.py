"""Schedules against their closed forms; q_sample moments; prediction conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules


@pytest.mark.parametrize("T", [500, 1000])
def test_linear_tables_equal_closed_form(T):
    s = schedules.linear(T)
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas, 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas), rtol=2e-5)
    assert s.num_timesteps == T
    # Known endpoint: the seeds' T=1000 schedule ends with alpha_bar ~ 4.04e-5.
    if T == 1000:
        assert abs(float(s.alpha_bars[-1]) - 4.0358e-5) < 1e-8


def test_cosine_matches_improved_ddpm_eq17():
    T, s_ = 1000, 0.008
    s = schedules.cosine(T)
    f = lambda t: np.cos((t / T + s_) / (1 + s_) * np.pi / 2) ** 2
    t = np.arange(T + 1, dtype=np.float64)
    alpha_bar = f(t) / f(0)
    betas = np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, 0.999)
    np.testing.assert_allclose(s.betas, betas, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas), rtol=1e-3, atol=1e-7)
    assert float(s.betas[-1]) == pytest.approx(0.999)


def test_bad_schedule_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="beta_start"):
        schedules.linear(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="num_timesteps"):
        schedules.linear(0)
    with pytest.raises(ValueError, match="prediction"):
        schedules.target(schedules.linear(10), jnp.zeros(1), jnp.zeros(1, jnp.int32),
                         jnp.zeros(1), "score")


def test_q_sample_has_ddpm_eq4_mean_and_variance():
    s = schedules.linear(1000)
    n = 200_000
    x0 = jnp.full((n, 1), 0.7)
    for step in [0, 250, 999]:
        t = jnp.full((n,), step, jnp.int32)
        noise = jax.random.normal(jax.random.key(step), x0.shape)
        xt = np.asarray(schedules.q_sample(s, x0, t, noise))
        ab = float(s.alpha_bars[step])
        assert xt.mean() == pytest.approx(np.sqrt(ab) * 0.7, abs=5e-3)
        assert xt.var() == pytest.approx(1 - ab, rel=1e-2, abs=1e-5)


@pytest.mark.parametrize("prediction", schedules.PREDICTIONS)
@pytest.mark.parametrize("make", [schedules.linear, schedules.cosine])
def test_conversions_round_trip(prediction, make):
    s = make(1000)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, (16, 4, 4, 3), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    # Avoid the last cosine steps where alpha_bar ~ 0 makes x0-from-eps ill-posed.
    t = jnp.linspace(0, 900, 16).astype(jnp.int32)
    x_t = schedules.q_sample(s, x0, t, noise)
    out = schedules.target(s, x0, t, noise, prediction)
    x0_hat, eps_hat = schedules.to_x0_eps(s, x_t, t, out, prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5 if prediction != "eps" else 2e-4)
    np.testing.assert_allclose(eps_hat, noise, atol=1e-5 if prediction != "x0" else 2e-4)


def test_v_is_salimans_ho_definition():
    s = schedules.linear(1000)
    x0, eps, t = jnp.array([[0.5]]), jnp.array([[-1.2]]), jnp.array([400])
    ab = float(s.alpha_bars[400])
    v = float(schedules.v_from(s, x0, t, eps)[0, 0])
    assert v == pytest.approx(np.sqrt(ab) * -1.2 - np.sqrt(1 - ab) * 0.5, rel=1e-6)


def test_per_example_broadcasts_against_the_batch():
    x = jnp.zeros((3, 4, 5, 2))
    values = jnp.arange(3.0)
    out = schedules.per_example(values, like=x)
    assert out.shape == (3, 1, 1, 1)
    np.testing.assert_array_equal((out + x)[:, 2, 3, 1], values)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_bfloat16_inputs_keep_the_noise_at_small_t(prediction):
    # alpha_bar_0 = 1 - 1e-4 rounds to 1 in bfloat16: the coefficients must be taken in
    # float32 and cast last, or sigma_0 = 0 (no noise, and x0-prediction divides by zero).
    schedule = schedules.linear(1000)
    kx, kn = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(kx, (4, 8, 8, 1), minval=-1, maxval=1)
    noise = jax.random.normal(kn, x0.shape)
    t = jnp.array([0, 0, 1, 500], jnp.int32)
    alpha, sigma = schedules.alpha_sigma(schedule, t, x0.astype(jnp.bfloat16))
    assert alpha.dtype == sigma.dtype == jnp.bfloat16 and alpha.shape == (4, 1, 1, 1)
    assert float(sigma[0, 0, 0, 0]) == pytest.approx(0.01, rel=1e-2)  # sqrt(beta_0)
    x_t32 = schedules.q_sample(schedule, x0, t, noise)
    x_t16 = schedules.q_sample(schedule, x0.astype(jnp.bfloat16), t,
                               noise.astype(jnp.bfloat16))
    assert x_t16.dtype == jnp.bfloat16
    added = np.asarray(x_t16.astype(jnp.float32) - x0)[:2]  # the noise added at t = 0
    np.testing.assert_allclose(added, 0.01 * np.asarray(noise)[:2], atol=0.01)
    assert np.abs(added).max() > 0.01
    target = schedules.target(schedule, x0, t, noise, prediction).astype(jnp.bfloat16)
    x0_hat, eps_hat = schedules.to_x0_eps(schedule, x_t32.astype(jnp.bfloat16), t, target,
                                          prediction)
    assert np.isfinite(np.asarray(x0_hat.astype(jnp.float32))).all()
    assert np.isfinite(np.asarray(eps_hat.astype(jnp.float32))).all()
    np.testing.assert_allclose(np.asarray(x0_hat.astype(jnp.float32))[2:], x0[2:], atol=0.1)
