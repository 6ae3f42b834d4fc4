"""EDM: table 1's preconditioning, the loss against a numpy recomputation, eq. 5's noise
levels, and the Heun sampler against the exact probability-flow ODE of a Gaussian law."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import edm, losses, samplers

MU, S = -0.4, 0.6  # the data law N(MU, S^2 I)
SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 3.0, 80.0], np.float32)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_preconditioning_is_table_1(sigma_data):
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64) for c in
                                    edm.preconditioning(SIGMAS, sigma_data=sigma_data))
    s, sd = SIGMAS.astype(np.float64), sigma_data
    np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, s * sd / np.sqrt(sd**2 + s**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-6)
    np.testing.assert_allclose(edm.loss_weight(SIGMAS, sigma_data=sd),
                               (s**2 + sd**2) / (s * sd) ** 2, rtol=1e-5)
    # At sigma = sigma_data: skip and network share the output equally.
    at = [float(c) for c in edm.preconditioning(sd, sigma_data=sd)]
    np.testing.assert_allclose(at, [0.5, sd / math.sqrt(2), 1 / (sd * math.sqrt(2)),
                                    math.log(sd) / 4], rtol=1e-6)


def test_preconditioning_gives_unit_variance_input_and_target():
    """EDM appendix B.6: Var[c_in x] = 1 and Var[(y - c_skip x) / c_out] = 1 for data of
    std sigma_data."""
    rng = np.random.default_rng(0)
    sd = 0.5
    y = sd * rng.normal(size=200_000)
    n = rng.normal(size=200_000)
    for sigma in (0.01, 0.5, 20.0):
        c_skip, c_out, c_in, _ = (float(c) for c in edm.preconditioning(sigma, sigma_data=sd))
        x = y + sigma * n
        assert np.std(c_in * x) == pytest.approx(1, abs=0.01)
        assert np.std((y - c_skip * x) / c_out) == pytest.approx(1, abs=0.01)


def test_precondition_wraps_the_model():
    seen = {}

    def model_fn(x, t, cond):
        seen.update(x=np.asarray(x), t=np.asarray(t), cond=cond)
        return jnp.tanh(x) * 2

    x = jax.random.normal(jax.random.key(0), (6, 2, 2, 1))
    out = edm.precondition(model_fn, sigma_data=0.5)(x, jnp.asarray(SIGMAS), "c")
    c_skip, c_out, c_in, c_noise = (np.asarray(c)[:, None, None, None]
                                    for c in edm.preconditioning(SIGMAS, sigma_data=0.5))
    np.testing.assert_allclose(seen["x"], c_in * np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(seen["t"], c_noise[:, 0, 0, 0], rtol=1e-6)
    assert seen["t"].dtype == np.float32 and seen["cond"] == "c"
    np.testing.assert_allclose(out, c_skip * x + c_out * np.tanh(seen["x"]) * 2, rtol=1e-5)


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (32, 4, 4, 1)).astype(np.float32),
             "label": np.full((32,), 2, np.int32)}
    calls = []

    def apply_fn(variables, x, t, cond, *, train, rngs):
        calls.append(dict(train=train, rngs=rngs))
        return 0.3 * x + 0.1

    loss_fn = losses.make_edm_loss(apply_fn, cond_drop_prob=0.0, num_classes=10)
    loss, metrics = jax.jit(loss_fn)({}, batch, jax.random.key(3))
    assert calls[0]["train"] is True and "dropout" in calls[0]["rngs"]
    # The same draws as the loss: sigma from the first key, noise from the second.
    key_sigma, key_noise, _, _ = jax.random.split(jax.random.key(3), 4)
    log_sigma = np.log(np.asarray(edm.sample_sigma(key_sigma, 32), np.float64))
    sigma = np.exp(log_sigma)[:, None, None, None]
    noise = np.asarray(jax.random.normal(key_noise, (32, 4, 4, 1)), np.float64)
    y = batch["image"].astype(np.float64)
    x = y + sigma * noise
    sd = 0.5
    denoised = (sd**2 / (sigma**2 + sd**2) * x
                + sigma * sd / np.sqrt(sigma**2 + sd**2) * (0.3 * x / np.sqrt(sigma**2 + sd**2)
                                                            + 0.1))
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    np.testing.assert_allclose(float(loss), np.mean(weight * (denoised - y) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["mse_x0"]), np.mean((denoised - y) ** 2),
                               rtol=1e-4)


def test_training_noise_levels_are_log_normal():
    sigma = np.asarray(edm.sample_sigma(jax.random.key(0), 50_000, p_mean=-1.2, p_std=1.2))
    assert abs(np.log(sigma).mean() + 1.2) < 0.03 and abs(np.log(sigma).std() - 1.2) < 0.03


def test_exact_denoiser_minimises_the_loss():
    n = 20_000
    batch = {"image": (MU + S * np.random.default_rng(1).normal(size=(n, 1, 1, 1)))
             .astype(np.float32)}

    def apply(bias):
        # F such that D = gaussian_denoiser + bias c_out (i.e. F = F_exact + bias).
        def fn(v, x_in, t, c, **k):
            sigma = jnp.exp(4 * t)[:, None, None, None]
            c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
            x = x_in / c_in
            return (edm.gaussian_denoiser(x, sigma[:, 0, 0, 0], mean=MU, std=S)
                    - c_skip * x) / c_out + bias
        return fn

    exact, _ = losses.make_edm_loss(apply(0.0))({}, batch, jax.random.key(0))
    biased, _ = losses.make_edm_loss(apply(0.3))({}, batch, jax.random.key(0))
    # lambda ||D - y||^2 = ||F - F_target||^2: a bias b in F adds b^2 to the loss.
    assert float(biased) == pytest.approx(float(exact) + 0.09, rel=0.03)


def test_karras_sigmas_are_eq_5():
    sigmas = edm.karras_sigmas(5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    i = np.arange(5)
    eq5 = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas, np.append(eq5, 0), rtol=1e-5)
    assert sigmas.dtype == np.float32
    with pytest.raises(ValueError, match="sigma_min"):
        edm.karras_sigmas(5, sigma_min=1.0, sigma_max=0.5)


def _exact_denoiser(x, sigma, cond):
    return edm.gaussian_denoiser(x, sigma, mean=MU, std=S)


X1 = jax.random.normal(jax.random.key(5), (6, 3, 3, 1))
SIGMA_MAX = 80.0
# The probability-flow ODE carries x(sigma) = MU + sqrt(S^2 + sigma^2) z; the start is
# x(80) = 80 x1, so z = (80 x1 - MU) / sqrt(S^2 + 80^2) and the endpoint is MU + S z.
ENDPOINT = MU + S * (SIGMA_MAX * X1 - MU) / math.sqrt(S**2 + SIGMA_MAX**2)


def _heun_error(steps, **kw):
    out, _ = samplers.edm_heun(_exact_denoiser, jax.random.key(0), X1.shape, num_steps=steps,
                               initial_noise=X1, **kw)
    return float(jnp.max(jnp.abs(out - ENDPOINT)))


def _euler_error(steps):
    """EDM's Euler (alg. 1 without lines 6-8) on the same grid, for comparison."""
    sigmas = edm.karras_sigmas(steps)
    x = X1 * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + (s_next - s) * (x - _exact_denoiser(x, jnp.full((6,), s), None)) / s
    return float(jnp.max(jnp.abs(x - ENDPOINT)))


def test_heun_lands_on_the_exact_endpoint_at_second_order():
    errors = [_heun_error(n) for n in (64, 128, 256)]
    assert errors[-1] < 5e-4
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.5) & (ratios < 4.5)), errors  # error ~ 1 / N^2


def test_heun_beats_euler_at_equal_model_evaluations():
    # On eq. 5's grid from sigma_max = 80, a few large Heun steps average slopes that differ
    # by orders of magnitude (the last ones at sigma ~ 1e-3), so for this law Euler's finer
    # grid wins below ~30 evaluations; from there on Heun's second order does.
    for steps in (17, 33):  # 2N - 1 = 33, 65 evaluations
        assert _heun_error(steps) < _euler_error(2 * steps - 1), steps


def test_churn_is_alg_2():
    out0, _ = samplers.edm_heun(_exact_denoiser, jax.random.key(0), X1.shape, num_steps=8)
    churned, traj = samplers.edm_heun(_exact_denoiser, jax.random.key(0), X1.shape,
                                      num_steps=8, s_churn=10.0, keep_every=3)
    again, _ = samplers.edm_heun(_exact_denoiser, jax.random.key(0), X1.shape, num_steps=8,
                                 s_churn=10.0)
    assert float(jnp.max(jnp.abs(churned - out0))) > 1e-3
    np.testing.assert_array_equal(churned, again)
    assert traj.shape == (3, *X1.shape)
    np.testing.assert_array_equal(traj[-1], churned)
    # No sigma in [s_tmin, s_tmax]: no churn, alg. 1 exactly.
    none, _ = samplers.edm_heun(_exact_denoiser, jax.random.key(0), X1.shape, num_steps=8,
                                s_churn=10.0, s_tmin=100.0, s_tmax=200.0)
    np.testing.assert_allclose(none, out0, rtol=1e-6, atol=1e-6)
