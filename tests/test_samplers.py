"""Samplers against closed forms, NumPy reference loops and oracles (tiny shapes, short T)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers, schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]
T = 40
SHAPE = (3, 4, 4, 1)
SCHED = schedules.linear(T, beta_start=1e-4, beta_end=0.1)


def fake_eps(x, t, cond):
    """A smooth, time-dependent fake eps model (not the truth for any data)."""
    return 0.5 * jnp.tanh(x) + 0.2 * (t / T).astype(x.dtype)[:, None, None, None]


def linear_eps(x, t, cond):
    return 0.3 * x + 0.1 * (t / T).astype(x.dtype)[:, None, None, None]


def point_oracle(schedule, x_star, prediction):
    """The exact denoiser for data concentrated on x_star:
    eps = (x_t - sqrt(ab) x*) / sqrt(1 - ab), returned as eps, x0 or v."""

    def fn(x, t, cond):
        ab = schedule.alpha_bars[t][:, None, None, None]
        eps = (x - jnp.sqrt(ab) * x_star) / jnp.sqrt(1.0 - ab)
        return schedules.target(schedule, jnp.broadcast_to(x_star, x.shape), t, eps, prediction)

    return fn


def noise_stream(key, shape, ts):
    """The documented noise stream: x_T from split(key)[0], z_t from fold_in(split(key)[1], t)."""
    init_key, step_key = jax.random.split(key)
    x_T = np.asarray(jax.random.normal(init_key, shape), np.float64)
    zs = {int(t): np.asarray(jax.random.normal(jax.random.fold_in(step_key, t), shape)) for t in ts}
    return x_T, zs


def tables():
    return tuple(np.asarray(a, np.float64) for a in (SCHED.betas, SCHED.alphas, SCHED.alpha_bars))


def count_scans(jaxpr) -> int:
    """Counts scan eqns, recursing into every sub-jaxpr (pjit, cond branches, scan bodies)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "scan"
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(sub, "eqns"):
                    n += count_scans(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    n += count_scans(sub.jaxpr)
    return n


SAMPLERS = {
    "ddpm": lambda fn, key, **kw: samplers.ddpm(fn, SCHED, key, SHAPE, **kw),
    "ddpm_posterior": lambda fn, key, **kw: samplers.ddpm(
        fn, SCHED, key, SHAPE, variance="posterior", **kw
    ),
    "ddpm_no_noise": lambda fn, key, **kw: samplers.ddpm_no_noise(fn, SCHED, key, SHAPE, **kw),
    "ddim": lambda fn, key, **kw: samplers.ddim(fn, SCHED, key, SHAPE, num_steps=7, **kw),
    "ddim_eta": lambda fn, key, **kw: samplers.ddim(
        fn, SCHED, key, SHAPE, num_steps=7, eta=0.5, **kw
    ),
    "corruption": lambda fn, key, **kw: samplers.corruption(
        fn, None, key, SHAPE, prediction="x0", **kw
    ),
}


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("keep_every", [0, 3])
def test_one_scan(name, keep_every):
    jitted = jax.jit(lambda key: SAMPLERS[name](fake_eps, key, keep_every=keep_every))
    jaxpr = jax.make_jaxpr(jitted)(jax.random.key(0))
    assert count_scans(jaxpr.jaxpr) == 1


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta", "corruption"])
def test_trajectory_frames(name):
    key = jax.random.key(1)
    _, every = SAMPLERS[name](fake_eps, key, keep_every=1)  # x after every step
    num_steps = every.shape[0]
    out, traj = SAMPLERS[name](fake_eps, key, keep_every=3)
    assert traj.shape == (-(-num_steps // 3), *SHAPE)
    np.testing.assert_array_equal(traj[-1], out)
    # Slot j holds x after step 3j + 2 (the last slot: after the final step).
    expected = np.asarray(every)[[min(3 * j + 2, num_steps - 1) for j in range(traj.shape[0])]]
    np.testing.assert_allclose(traj, expected, atol=1e-6)


def test_ddpm_matches_seed_denoise_add_noise():
    """clip_x0=False is the seed's loop: x = denoise_add_noise(x, t, eps, z), z = 0 at the end."""
    key = jax.random.key(2)
    out, _ = samplers.ddpm(linear_eps, SCHED, key, SHAPE, clip_x0=False)
    b, a, ab = tables()
    x, zs = noise_stream(key, SHAPE, range(T))
    for t in range(T - 1, -1, -1):
        pred_noise = 0.3 * x + 0.1 * t / T
        z = zs[t] if t > 0 else 0.0
        mean = (x - pred_noise * ((1 - a[t]) / np.sqrt(1 - ab[t]))) / np.sqrt(a[t])
        x = mean + np.sqrt(b[t]) * z
    np.testing.assert_allclose(out, x, atol=5e-5)


def test_posterior_mean_equals_eps_mean_and_variance():
    """DDPM eq. 7 from x0 == eq. 11 from eps when both are consistent with x_t."""
    rng = np.random.default_rng(0)
    x_t = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    eps = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)

    def both(t):
        x0, _ = schedules.to_x0_eps(SCHED, x_t, jnp.full((3,), t), eps, "eps")
        return samplers.posterior_mean(SCHED, x_t, t, x0), samplers.eps_mean(SCHED, x_t, t, eps)

    from_x0, from_eps = jax.vmap(both)(jnp.arange(T))
    np.testing.assert_allclose(from_x0, from_eps, atol=5e-5, rtol=1e-4)
    _, _, ab = tables()
    ab_prev = np.append(1.0, ab[:-1])
    beta_tilde = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    variance = jax.vmap(lambda t: samplers.posterior_variance(SCHED, t))(jnp.arange(T))
    np.testing.assert_allclose(variance, beta_tilde, rtol=1e-3)
    assert variance[0] == 0.0


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_all_steps_equals_ddpm_posterior(clip_x0):
    key = jax.random.key(3)
    a, _ = samplers.ddpm(fake_eps, SCHED, key, SHAPE, variance="posterior", clip_x0=clip_x0)
    b, _ = samplers.ddim(fake_eps, SCHED, key, SHAPE, num_steps=T, eta=1.0, clip_x0=clip_x0)
    np.testing.assert_allclose(a, b, atol=1e-4)
    if clip_x0:
        return
    c, _ = samplers.ddpm(fake_eps, SCHED, key, SHAPE, variance="beta", clip_x0=clip_x0)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3  # the comparison can fail


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_clipped_matches_numpy_reference(variance):
    """clip_x0=True: eq. 7's posterior mean from the clipped x0 (eq. 4 inverted), plus
    sigma_t z with sigma_t^2 = beta_t or beta_tilde_t, and z = 0 at the last step (alg. 2)."""
    key = jax.random.key(13)
    out, _ = samplers.ddpm(fake_eps, SCHED, key, SHAPE, variance=variance, clip_x0=True)
    b, a, ab = tables()
    x, zs = noise_stream(key, SHAPE, range(T))
    clipped_any = False
    for t in range(T - 1, -1, -1):
        ab_prev = ab[t - 1] if t > 0 else 1.0
        eps = 0.5 * np.tanh(x) + 0.2 * t / T
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        clipped_any |= bool(np.abs(x0).max() > 1.0)
        x0 = np.clip(x0, -1.0, 1.0)
        # 1 - ab_t = (1 - ab_prev) + ab_prev beta_t: the same number, but without the float32
        # rounding of the table's ab_0 = 1 - 1e-4 (2e-4 relative in 1 - ab_0).
        one_minus_ab = (1 - ab_prev) + ab_prev * b[t]
        mean = (np.sqrt(ab_prev) * b[t] * x0 + np.sqrt(a[t]) * (1 - ab_prev) * x) / one_minus_ab
        var = b[t] if variance == "beta" else (1 - ab_prev) / one_minus_ab * b[t]
        x = mean + (np.sqrt(var) * zs[t] if t > 0 else 0.0)
    assert clipped_any  # the clip is exercised, so a missing clip would fail
    np.testing.assert_allclose(out, x, atol=5e-5)


@pytest.mark.parametrize("eta,clip_x0", [(0.0, False), (0.7, False), (0.7, True)])
def test_ddim_matches_numpy_reference(eta, clip_x0):
    """Strided DDIM, eq. 12 with eq. 16's sigma, in float64 on the same noise stream. With
    clip_x0, x0 is clipped and eps recomputed from it (eq. 4 solved for eps)."""
    key, num_steps = jax.random.key(4), 7
    out, _ = samplers.ddim(
        fake_eps, SCHED, key, SHAPE, num_steps=num_steps, eta=eta, clip_x0=clip_x0
    )
    _, _, ab = tables()
    ts = np.round(np.linspace(T - 1, 0, num_steps)).astype(int)
    assert ts[0] == T - 1 and ts[-1] == 0 and len(set(ts)) == num_steps
    x, zs = noise_stream(key, SHAPE, ts)
    clipped_any = False
    for i, t in enumerate(ts):
        ab_prev = ab[ts[i + 1]] if i + 1 < num_steps else 1.0
        eps = 0.5 * np.tanh(x) + 0.2 * t / T
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        if clip_x0:
            clipped_any |= bool(np.abs(x0).max() > 1.0)
            x0 = np.clip(x0, -1.0, 1.0)
            eps = (x - np.sqrt(ab[t]) * x0) / np.sqrt(1 - ab[t])
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev))
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps + sigma * zs[t]
    assert clipped_any or not clip_x0
    np.testing.assert_allclose(out, x, atol=5e-5)


def test_ddim_step_is_salimans_ho_update():
    """Eta = 0: z_s = alpha_s x0 + sigma_s / sigma_t (z_t - alpha_t x0), per example; the
    clean image (ab_s = 1) gives x0; a given eps is used as is."""
    kx, k0 = jax.random.split(jax.random.key(3))
    x_t, x0 = jax.random.normal(kx, SHAPE), jax.random.normal(k0, SHAPE)
    ab_t = np.array([0.3, 0.6, 0.9], np.float32)
    ab_s = np.array([0.5, 0.8, 1.0], np.float32)
    got = samplers.ddim_step(
        x_t=x_t, x0=x0, alpha_bar=schedules.per_example(jnp.asarray(ab_t), like=x_t),
        alpha_bar_prev=schedules.per_example(jnp.asarray(ab_s), like=x_t),
    )
    a_t, a_s = ab_t[:, None, None, None], ab_s[:, None, None, None]
    want = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) / np.sqrt(1 - a_t) * (x_t - np.sqrt(a_t) * x0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], x0[2])
    eps = jnp.ones(SHAPE)
    np.testing.assert_allclose(
        samplers.ddim_step(x_t=x_t, x0=x0, alpha_bar=0.5, alpha_bar_prev=0.75, eps=eps),
        np.sqrt(0.75) * x0 + 0.5 * eps, rtol=1e-6,
    )


def test_ddim_determinism():
    noise = jax.random.normal(jax.random.key(9), SHAPE)
    k1, k2 = jax.random.key(10), jax.random.key(11)
    # One compilation per eta, reused across keys.
    runs = {
        eta: jax.jit(
            lambda key, noise, eta=eta: samplers.ddim(
                fake_eps, SCHED, key, SHAPE, num_steps=8, eta=eta, initial_noise=noise
            )[0]
        )
        for eta in (0.0, 1.0)
    }
    free = jax.jit(lambda key: samplers.ddim(fake_eps, SCHED, key, SHAPE, num_steps=8)[0])
    diff = lambda a, b: float(jnp.abs(a - b).max())
    # Same key -> same result, for any eta.
    np.testing.assert_array_equal(runs[1.0](k1, noise), runs[1.0](k1, noise))
    np.testing.assert_array_equal(free(k1), free(k1))
    # eta = 0: the key matters only through x_T; with x_T fixed, any key gives the same result.
    np.testing.assert_array_equal(runs[0.0](k1, noise), runs[0.0](k2, noise))
    assert diff(free(k1), free(k2)) > 1e-3
    # eta > 0 adds per-step noise, so the key matters even with x_T fixed.
    assert diff(runs[1.0](k1, noise), runs[1.0](k2, noise)) > 1e-3


@pytest.mark.parametrize(
    "name,prediction,kwargs,atol",
    [
        ("ddpm", "eps", dict(clip_x0=True), 1e-5),
        ("ddpm", "x0", dict(clip_x0=True), 1e-5),
        ("ddpm", "v", dict(clip_x0=True), 1e-5),
        ("ddpm", "eps", dict(clip_x0=False), 5e-5),
        ("ddpm_posterior", "x0", dict(clip_x0=False), 5e-5),
        ("ddim", "v", dict(clip_x0=True), 1e-5),
        ("ddim_eta", "eps", dict(clip_x0=False), 1e-5),
    ],
)
def test_oracle_recovers_point(name, prediction, kwargs, atol):
    x_star = jnp.asarray(np.random.default_rng(5).uniform(-0.9, 0.9, SHAPE[1:]), jnp.float32)
    fn = point_oracle(SCHED, x_star, prediction)
    out, trajectory = SAMPLERS[name](fn, jax.random.key(6), prediction=prediction, **kwargs)
    assert trajectory is None  # keep_every defaults to 0
    np.testing.assert_allclose(out, np.broadcast_to(x_star, SHAPE), atol=atol)


def test_ddpm_no_noise_collapses_on_gaussian_data():
    """Data N(0, I): the true eps is E[eps | x_t] = sqrt(1 - ab) x_t. Without noise each step
    is x <- sqrt(alpha_t) x, so the output is sqrt(alpha_bar_{T-1}) x_T; with noise it stays
    N(0, I)."""
    schedule, shape = schedules.linear(1000), (512, 8)
    fn = lambda x, t, c: jnp.sqrt(1.0 - schedule.alpha_bars[t])[:, None] * x
    key = jax.random.key(7)
    x_T = jax.random.normal(jax.random.key(8), shape)
    right, _ = samplers.ddpm(fn, schedule, key, shape, clip_x0=False, initial_noise=x_T)
    wrong, _ = samplers.ddpm_no_noise(fn, schedule, key, shape, clip_x0=False, initial_noise=x_T)
    np.testing.assert_allclose(wrong, jnp.sqrt(schedule.alpha_bars[-1]) * x_T, rtol=2e-3, atol=1e-7)
    assert abs(float(jnp.var(right)) - 1.0) < 0.1
    assert float(jnp.var(wrong)) < 1e-3 * float(jnp.var(right))


def test_corruption_matches_course_loop():
    """The course's loop; t is the remaining corruption amount (5 - i) / 5 on the losses'
    1000-step scale (the fake model reads it so the test sees it)."""
    key = jax.random.key(12)
    pred = lambda x, t, c: 0.5 * x + 0.2 + (t / 1000.0).astype(x.dtype)[:, None, None, None]
    out, _ = samplers.corruption(pred, None, key, SHAPE, num_steps=5)
    x = np.asarray(jax.random.uniform(key, SHAPE, minval=-1.0, maxval=1.0), np.float64)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < 0
    for i in range(5):
        mix, t = 1 / (5 - i), [999, 799, 599, 400, 200][i]
        x = x * (1 - mix) + (0.5 * x + 0.2 + t / 1000) * mix
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="num_steps"):
        samplers.ddim(fake_eps, SCHED, jax.random.key(0), SHAPE, num_steps=T + 1)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.ddim(fake_eps, SCHED, jax.random.key(0), SHAPE, num_steps=0)
    with pytest.raises(ValueError, match="variance"):
        samplers.ddpm(fake_eps, SCHED, jax.random.key(0), SHAPE, variance="big")
    with pytest.raises(ValueError, match="keep_every"):
        samplers.ddpm(fake_eps, SCHED, jax.random.key(0), SHAPE, keep_every=-1)
    with pytest.raises(ValueError, match="prediction"):
        samplers.corruption(fake_eps, None, jax.random.key(0), SHAPE, prediction="eps")
    with pytest.raises(ValueError, match="prediction"):
        samplers.ddim(fake_eps, SCHED, jax.random.key(0), SHAPE, prediction="noise")


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from jaxdiff import samplers, schedules
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sched = schedules.linear(20)
    fn = lambda x, t, c: 0.5 * jnp.tanh(x) + 0.01 * t[:, None, None, None]
    key = jax.random.key(0)
    for name, kw in [("ddpm", {}), ("ddim", {"num_steps": 5, "eta": 0.5}),
                     ("dpm_solver_pp", {"num_steps": 5})]:
        sampler = getattr(samplers, name)
        run = jax.jit(lambda k, m: sampler(fn, sched, k, (8, 4, 4, 1), keep_every=2, mesh=m, **kw),
                      static_argnums=1)
        out, traj = run(key, mesh)
        ref, ref_traj = run(key, None)
        assert len(out.sharding.device_set) == 4, out.sharding
        assert len(traj.sharding.device_set) == 4, traj.sharding
        assert out.sharding.spec[0] == "data" and traj.sharding.spec[1] == "data"
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_allclose(traj, ref_traj, atol=1e-5)
        # Any axis names, any number of axes: the batch is split over every device.
        for other in (Mesh(np.array(jax.devices()), ("batch",)),
                      Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "fsdp"))):
            out, traj = run(key, other)
            assert {s.data.shape[0] for s in out.addressable_shards} == {2}, out.sharding
            assert {s.data.shape[1] for s in traj.addressable_shards} == {2}, traj.sharding
            np.testing.assert_allclose(out, ref, atol=1e-5)
    print("OK")
    """
)


def test_sharded_sampling_on_4_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
