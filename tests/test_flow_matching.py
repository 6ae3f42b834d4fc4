"""Flow matching: the interpolant, its exact Gaussian velocity, the loss against a numpy
recomputation, and the Euler / Heun samplers against the exact flow of a Gaussian law."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import flow_matching, losses, samplers

ROOT = Path(__file__).resolve().parents[1]
MU, S = 0.7, 0.3  # the data law N(MU, S^2 I)


def _recorder(scale=0.3):
    """A fake apply_fn (outputs scale * x_t) recording its inputs, also under jit."""
    calls = []

    def record(x_t, t, cond):
        calls[-1].update(x_t=np.asarray(x_t), t=np.asarray(t),
                         cond=jax.tree.map(np.asarray, cond))

    def apply_fn(variables, x_t, t, cond, *, train, rngs):
        calls.append(dict(train=train, rngs=rngs, params=variables))
        jax.debug.callback(record, x_t, t, cond)
        return scale * x_t

    return apply_fn, calls


def test_interpolant_ends_and_velocity_is_its_derivative():
    rng = np.random.default_rng(0)
    x0, eps = (rng.normal(size=(3, 4, 4, 1)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(flow_matching.interpolate(x0, eps, jnp.zeros(3)), x0)
    np.testing.assert_allclose(flow_matching.interpolate(x0, eps, jnp.ones(3)), eps)
    t = jnp.array([0.1, 0.5, 0.9])
    _, dx = jax.jvp(lambda t: flow_matching.interpolate(x0, eps, t), (t,), (jnp.ones(3),))
    np.testing.assert_allclose(dx, flow_matching.velocity(x0, eps), rtol=1e-6, atol=1e-6)


def test_gaussian_velocity_is_the_derivative_of_the_exact_flow():
    """x_t = (1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) z solves dx/dt = v(x, t)."""
    z = jax.random.normal(jax.random.key(0), (5, 2, 2, 1))

    def path(t):
        return (1 - t) * MU + jnp.sqrt((1 - t) ** 2 * S**2 + t**2) * z

    for t in (0.05, 0.3, 0.8, 1.0):
        x, dx = jax.jvp(path, (jnp.float32(t),), (jnp.float32(1.0),))
        v = flow_matching.gaussian_velocity(x, jnp.full((5,), t), mean=MU, std=S)
        np.testing.assert_allclose(v, dx, rtol=1e-5, atol=1e-5)


def test_gaussian_velocity_is_the_conditional_mean_of_eps_minus_x0():
    """Monte Carlo: regress eps - x0 on x_t at one t; the slope and intercept are the
    closed form's."""
    rng = np.random.default_rng(1)
    n, t = 400_000, 0.4
    x0 = MU + S * rng.normal(size=n)
    eps = rng.normal(size=n)
    xt = (1 - t) * x0 + t * eps
    slope, intercept = np.polyfit(xt, eps - x0, 1)
    grid = np.array([-1.0, 0.0, 1.0], np.float32)
    v = np.asarray(flow_matching.gaussian_velocity(grid, jnp.full((3,), t), mean=MU, std=S))
    np.testing.assert_allclose(slope * grid + intercept, v, atol=0.01)


def test_time_sampling_laws():
    key = jax.random.key(2)
    u = np.asarray(flow_matching.sample_time(key, 50_000, "uniform"))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    t = np.asarray(flow_matching.sample_time(key, 50_000, "logit_normal", logit_mean=0.5,
                                             logit_std=2.0))
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.05 and abs(logit.std() - 2.0) < 0.05
    with pytest.raises(ValueError, match="time_sampling"):
        flow_matching.sample_time(key, 4, "cosine")


@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_loss_matches_numpy(time_sampling):
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32)}
    apply_fn, calls = _recorder()
    loss_fn = losses.make_flow_matching_loss(apply_fn, time_sampling=time_sampling)
    loss, metrics = jax.jit(loss_fn)({"w": jnp.ones(2)}, batch, jax.random.key(3))
    (call,) = calls
    assert call["train"] is True and "dropout" in call["rngs"]
    time = np.asarray(call["t"], np.float64)
    assert call["t"].dtype == np.float32 and time.shape == (16,)
    assert 0 < time.min() and time.max() < 1000  # the model sees 1000 t
    t = (time / 1000)[:, None, None, None]
    x0, x_t = batch["image"].astype(np.float64), np.asarray(call["x_t"], np.float64)
    eps = (x_t - (1 - t) * x0) / t
    assert abs(eps.mean()) < 0.1 and abs(eps.std() - 1) < 0.1  # the noise is standard
    expected = ((0.3 * x_t - (eps - x0)) ** 2).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-3)
    assert float(metrics["mse_v"]) == float(loss)


def test_exact_velocity_gives_the_irreducible_loss_and_wrong_ones_more():
    """With data N(MU, S^2) the loss of the exact velocity field is the conditional variance
    of eps - x0, which a perturbed field exceeds."""
    n = 20_000
    batch = {"image": (MU + S * np.random.default_rng(4).normal(size=(n, 1, 1, 1)))
             .astype(np.float32)}

    def apply(bias):
        return lambda v, x, t, c, **k: flow_matching.gaussian_velocity(
            x, t / 1000.0, mean=MU, std=S) + bias

    exact, _ = losses.make_flow_matching_loss(apply(0.0))({}, batch, jax.random.key(0))
    biased, _ = losses.make_flow_matching_loss(apply(0.2))({}, batch, jax.random.key(0))
    # E over t ~ U(0, 1) of Var[eps - x0 | x_t] = E[s^2 / ((1 - t)^2 s^2 + t^2)].
    ts = (np.arange(100_000) + 0.5) / 100_000
    irreducible = np.mean(S**2 / ((1 - ts) ** 2 * S**2 + ts**2))
    assert float(exact) == pytest.approx(irreducible, rel=0.05)
    assert float(biased) == pytest.approx(float(exact) + 0.04, rel=0.05)


def test_label_dropout_for_classifier_free_guidance():
    n = 4000
    batch = {"image": np.zeros((n, 2, 2, 1), np.float32), "label": np.full((n,), 3, np.int32)}
    apply_fn, calls = _recorder()
    losses.make_flow_matching_loss(apply_fn, cond_drop_prob=0.1, num_classes=10)(
        {}, batch, jax.random.key(7))
    labels = calls[0]["cond"]
    assert set(np.unique(labels)) == {3, 10}
    assert abs(np.mean(labels == 10) - 0.1) < 0.02
    losses.make_flow_matching_loss(apply_fn)({}, batch, jax.random.key(7))
    assert calls[1]["cond"] is None  # no num_classes: the labels are no condition
    with pytest.raises(ValueError, match="cond_drop_prob"):
        losses.make_flow_matching_loss(apply_fn, cond_drop_prob=1.5)


def _gaussian_field(x, time, cond):
    return flow_matching.gaussian_velocity(x, time / 1000.0, mean=MU, std=S)


X1 = jax.random.normal(jax.random.key(11), (6, 3, 3, 1))
ENDPOINT = MU + S * X1  # where the exact flow carries x_1


def _error(sampler, steps, **kw):
    out, _ = sampler(_gaussian_field, jax.random.key(0), X1.shape, num_steps=steps,
                     initial_noise=X1, **kw)
    return float(jnp.max(jnp.abs(out - ENDPOINT)))


def test_euler_converges_to_the_exact_endpoint_at_first_order():
    errors = [_error(samplers.flow_euler, n) for n in (64, 128, 256, 512)]
    assert errors[-1] < 4e-3  # ~1.4 / N
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), errors  # error ~ 1 / N


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_beats_euler_at_equal_model_evaluations(shift):
    for nfe in (4, 8, 16, 32):
        euler = _error(samplers.flow_euler, nfe, shift=shift)
        heun = _error(samplers.flow_heun, nfe // 2, shift=shift)
        assert heun < euler, (nfe, heun, euler)
    assert _error(samplers.flow_heun, 128) < 1e-4  # second order


def test_flow_grid_and_the_time_the_model_sees():
    np.testing.assert_allclose(samplers.flow_grid(4), [1, 0.75, 0.5, 0.25, 0])
    # SD3 eq. 23 with shift 3: t' = 3 t / (1 + 2 t).
    np.testing.assert_allclose(samplers.flow_grid(2, shift=3.0), [1, 0.75, 0], rtol=1e-6)
    seen = []
    fn = lambda x, t, c: (jax.debug.callback(lambda t: seen.append(np.asarray(t)), t), x)[1]
    samplers.flow_euler(fn, jax.random.key(0), (2, 1, 1, 1), num_steps=4)
    assert [s.dtype for s in seen] == [np.float32] * 4
    np.testing.assert_allclose(np.stack(seen), np.repeat([[1000], [750], [500], [250]], 2, 1))
    with pytest.raises(ValueError, match="shift"):
        samplers.flow_grid(4, shift=0.0)
    with pytest.raises(ValueError, match="grid"):
        samplers.flow_grid(4, grid="karras")


def test_trajectory_and_cfg():
    out, traj = samplers.flow_heun(_gaussian_field, jax.random.key(0), X1.shape, num_steps=6,
                                   initial_noise=X1, keep_every=2)
    assert traj.shape == (3, *X1.shape)
    np.testing.assert_array_equal(traj[-1], out)
    # Classifier-free guidance combines two velocities: with a model that ignores the label
    # it changes nothing; with one that uses it, the guided velocity is (1 + w) vc - w vu.
    from jaxdiff import guidance

    labelled = lambda x, t, c: x * (1.0 + (c[:, None, None, None] < 10))
    guided = guidance.cfg(labelled, guidance_scale=2.0, num_classes=10)
    x = jnp.ones((2, 1, 1, 1))
    np.testing.assert_allclose(guided(x, jnp.ones(2), jnp.array([1, 2])), 3 * 2 - 2 * 1)


MESH_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxdiff import edm, losses, samplers
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def apply_fn(variables, x, t, c, train=False, rngs=None):
        w = variables["params"]["w"]
        return w[0] * jnp.tanh(x) + w[1] * (t[:, None, None, None] / 1000.0) + w[2] * x

    params = {"w": jnp.array([0.5, -0.3, 0.2])}
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (8, 4, 4, 1)).astype(np.float32),
             "label": np.arange(8, dtype=np.int32) % 3}
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    for loss_fn in (losses.make_flow_matching_loss(apply_fn, num_classes=3,
                                                   time_sampling="logit_normal"),
                    losses.make_edm_loss(apply_fn, num_classes=3)):
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        (loss, _), grads = step(params, sharded, jax.random.key(1))
        (ref_loss, _), ref_grads = step(params, batch, jax.random.key(1))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(grads["w"], ref_grads["w"], rtol=1e-4, atol=1e-6)
        assert np.all(np.isfinite(grads["w"])) and np.abs(grads["w"]).sum() > 0
        # pure: the same key gives the same loss, another key another one
        assert float(step(params, sharded, jax.random.key(1))[0][0]) == float(loss)
        assert float(step(params, sharded, jax.random.key(2))[0][0]) != float(loss)
    fn = lambda x, t, c: 0.5 * jnp.tanh(x) + 0.001 * t[:, None, None, None]
    for sampler, kw in [(samplers.flow_euler, {"shift": 3.0}), (samplers.flow_heun, {}),
                        (samplers.edm_heun, {"s_churn": 5.0})]:
        run = jax.jit(lambda k, m: sampler(fn, k, (8, 4, 4, 1), num_steps=5, keep_every=2,
                                           mesh=m, **kw), static_argnums=1)
        out, traj = run(jax.random.key(0), mesh)
        ref, ref_traj = run(jax.random.key(0), None)
        assert len(out.sharding.device_set) == 4 and out.sharding.spec[0] == "data"
        assert traj.sharding.spec[1] == "data"
        np.testing.assert_allclose(out, ref, atol=1e-5)
        np.testing.assert_allclose(traj, ref_traj, atol=1e-5)
    print("OK")
    """
)


@pytest.mark.slow  # ten compiles in a fresh process: ~35 s on 2 idle cores
def test_losses_and_samplers_on_a_4_device_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", MESH_SCRIPT], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
