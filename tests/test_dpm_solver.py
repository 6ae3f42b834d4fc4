"""DPM-Solver++(2M) against DDIM, a float64 NumPy reference of alg. 2, and the exact flow of a
Gaussian law; the timestep grids it shares with DDIM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers import SCHED, SHAPE, count_scans, fake_eps, point_oracle

from jaxdiff import samplers, schedules

COSINE = schedules.cosine(256)
MU, STD = 0.3, 0.5  # the Gaussian law N(MU, STD^2) per pixel


def gaussian_denoiser(schedule, prediction):
    """The exact denoiser of data N(MU, STD^2): E[x0 | x_t] = MU + alpha STD^2 / (alpha^2
    STD^2 + sigma^2) (x_t - alpha MU), returned as eps, x0 or v."""

    def fn(x, t, cond):
        ab = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
        alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
        x0 = MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x - alpha * MU)
        eps = (x - alpha * x0) / sigma
        return schedules.target(schedule, x0, t, eps, prediction)

    return fn


def exact_flow(schedule, x_T):
    """The probability-flow ODE of N(MU, STD^2) keeps xi = (x_t - alpha_t MU) / sqrt(alpha_t^2
    STD^2 + sigma_t^2) constant, so it maps x_T to MU + STD xi at t = 0 (the clean image)."""
    ab = schedule.alpha_bars[-1]
    return MU + STD * (x_T - jnp.sqrt(ab) * MU) / jnp.sqrt(ab * STD**2 + 1.0 - ab)


def test_timestep_grids():
    ts, prev = samplers.timestep_grid(256, 4, "trailing")
    np.testing.assert_array_equal(ts, [255, 191, 127, 63])
    np.testing.assert_array_equal(prev, [191, 127, 63, -1])
    for n in (1, 2, 4, 8, 16, 32, 64, 128):  # halving nests: the N grid is every other 2N point
        coarse, _ = samplers.timestep_grid(256, n, "trailing")
        fine, _ = samplers.timestep_grid(256, 2 * n, "trailing")
        np.testing.assert_array_equal(coarse, fine[::2])
    for spacing in samplers.SPACINGS:  # the full walk either way
        full, _ = samplers.timestep_grid(40, 40, spacing)
        np.testing.assert_array_equal(full, np.arange(39, -1, -1))
    np.testing.assert_array_equal(samplers.timestep_grid(40, 3)[0], [39, 20, 0])
    np.testing.assert_array_equal(samplers.timestep_grid(40, 3, "leading")[0], [26, 13, 0])
    with pytest.raises(ValueError, match="spacing"):
        samplers.timestep_grid(40, 3, "karras")
    with pytest.raises(ValueError, match="num_steps"):
        samplers.timestep_grid(40, 41)


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.parametrize("prediction,clip_x0", [("eps", False), ("v", True), ("x0", True)])
def test_order_1_is_ddim(spacing, prediction, clip_x0):
    key = jax.random.key(0)
    kw = dict(prediction=prediction, num_steps=7, clip_x0=clip_x0, spacing=spacing)
    a, _ = samplers.dpm_solver_pp(fake_eps, SCHED, key, SHAPE, order=1, **kw)
    b, _ = samplers.ddim(fake_eps, SCHED, key, SHAPE, **kw)
    np.testing.assert_allclose(a, b, atol=2e-5)
    c, _ = samplers.dpm_solver_pp(fake_eps, SCHED, key, SHAPE, order=2, **kw)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # the comparison can fail


def test_matches_numpy_reference_of_alg_2():
    """Alg. 2 line by line in float64 with lambda = log(alpha / sigma), on the linspace grid."""
    key, n = jax.random.key(1), 7
    out, _ = samplers.dpm_solver_pp(
        fake_eps, SCHED, key, SHAPE, num_steps=n, clip_x0=False, spacing="linspace"
    )
    ab_table = np.asarray(SCHED.alpha_bars, np.float64)
    ts = np.round(np.linspace(len(ab_table) - 1, 0, n)).astype(int)
    ab = lambda t: ab_table[t] if t >= 0 else 1.0
    lam = lambda t: 0.5 * np.log(ab(t) / (1 - ab(t)))
    x = np.asarray(jax.random.normal(jax.random.split(key)[0], SHAPE), np.float64)
    x0_before, h_before = None, None
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < n else -1
        eps = 0.5 * np.tanh(x) + 0.2 * t / len(ab_table)
        x0 = (x - np.sqrt(1 - ab(t)) * eps) / np.sqrt(ab(t))
        if s < 0:  # to the clean image: sigma = 0, first order
            x = x0
            break
        h = lam(s) - lam(t)
        d = x0 if i == 0 else (1 + h / (2 * h_before)) * x0 - h / (2 * h_before) * x0_before
        x = np.sqrt((1 - ab(s)) / (1 - ab(t))) * x - np.sqrt(ab(s)) * (np.exp(-h) - 1) * d
        x0_before, h_before = x0, h
    np.testing.assert_allclose(out, x, atol=5e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_gaussian_oracle_reproduces_the_law(prediction):
    """With the exact denoiser of N(MU, STD^2), 20 steps follow the exact flow closely (far
    closer than DDIM's first order) and the samples have the law's mean and std."""
    shape, key = (4096, 2), jax.random.key(2)
    fn = gaussian_denoiser(COSINE, prediction)
    kw = dict(prediction=prediction, num_steps=20, clip_x0=False, spacing="trailing")
    out, _ = samplers.dpm_solver_pp(fn, COSINE, key, shape, **kw)
    first, _ = samplers.ddim(fn, COSINE, key, shape, **kw)
    exact = exact_flow(COSINE, jax.random.normal(jax.random.split(key)[0], shape))
    error, ddim_error = float(jnp.abs(out - exact).max()), float(jnp.abs(first - exact).max())
    assert error < 0.015 and error < ddim_error / 10, (error, ddim_error)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - STD) < 0.01


def test_point_oracle_one_scan_and_trajectory():
    x_star = jnp.asarray(np.random.default_rng(3).uniform(-0.9, 0.9, SHAPE[1:]), jnp.float32)
    run = lambda key, keep: samplers.dpm_solver_pp(
        point_oracle(SCHED, x_star, "v"), SCHED, key, SHAPE, prediction="v", num_steps=6,
        keep_every=keep,
    )
    out, traj = run(jax.random.key(4), 2)
    np.testing.assert_allclose(out, np.broadcast_to(x_star, SHAPE), atol=1e-5)
    assert traj.shape == (3, *SHAPE)
    np.testing.assert_array_equal(traj[-1], out)
    jaxpr = jax.make_jaxpr(lambda key: run(key, 2))(jax.random.key(0))
    assert count_scans(jaxpr.jaxpr) == 1
    with pytest.raises(ValueError, match="order"):
        samplers.dpm_solver_pp(fake_eps, SCHED, jax.random.key(0), SHAPE, order=3)
