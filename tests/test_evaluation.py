"""Frechet distance against closed forms and scipy, FID floors, accuracy, the feature
classifier on scikit-learn's digits, its cache, and the evaluate CLI on a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from sklearn import datasets

from jaxdiff import evaluation
from jaxdiff.models.classifier import Classifier


def _random_cov(rng, dim, *, rank=None):
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / dim


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    # Commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = evaluation.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = _random_cov(rng, 8), _random_cov(rng, 8)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # a genuinely non-commuting case
    # Independent reference: the textbook formula with scipy's general sqrtm of S1 S2.
    cross = scipy.linalg.sqrtm(s1 @ s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real
    got = evaluation.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    np.testing.assert_allclose(evaluation.frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-8)


def test_frechet_distance_zero_for_identical_and_finite_for_singular():
    rng = np.random.default_rng(2)
    mu = rng.normal(size=6)
    singular = _random_cov(rng, 6, rank=2)  # rank 2 of 6: sqrtm(S1 S2) is ill-conditioned
    assert evaluation.frechet_distance(mu, singular, mu, singular) == pytest.approx(0, abs=1e-9)
    features = rng.normal(size=(50, 4))
    assert evaluation.fid(features, features) == pytest.approx(0, abs=1e-9)
    # Singular vs full rank: finite and equal to the 1-d closed form per eigen-direction.
    d = evaluation.frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.eye(2))
    assert d == pytest.approx((1 - 1) ** 2 + (0 - 1) ** 2)


def test_gaussian_fit_and_fid_of_known_moments():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
    mu, sigma = evaluation.gaussian_fit(b)
    np.testing.assert_allclose(mu, 1.0, atol=0.05)
    np.testing.assert_allclose(sigma, 4.0 * np.eye(3), atol=0.15)
    # N(0, I) vs N(1, 4I) in 3-d: 3 * 1 + 3 * (2 - 1)^2 = 6.
    assert evaluation.fid(a, b) == pytest.approx(6.0, rel=0.05)
    with pytest.raises(ValueError, match="N >= 2"):
        evaluation.gaussian_fit(a[:1])


def test_conditional_accuracy_perfect_and_constant():
    labels = np.arange(1000) % 10
    perfect_logits = np.eye(10)[labels] * 5.0
    assert evaluation.conditional_accuracy(perfect_logits, labels) == 1.0
    assert evaluation.conditional_accuracy(labels, labels) == 1.0
    assert evaluation.conditional_accuracy(np.zeros(1000, int), labels) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="labels"):
        evaluation.conditional_accuracy(labels[:10], labels)


@pytest.fixture(scope="module")
def digits():
    d = datasets.load_digits()
    images = (d.images[..., None] / 16.0 * 2.0 - 1.0).astype(np.float32)
    return images, d.target.astype(np.int32)


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    (train_x, train_y), heldout = evaluation.split_heldout(images, labels, fraction=0.5, seed=0)
    model = Classifier(num_classes=10)
    params, accuracy = evaluation.train_feature_classifier(
        train_x, train_y, steps=200, seed=0, heldout=heldout, model=model, batch_size=64
    )
    return model, params, accuracy, heldout


def test_classifier_learns_digits(trained):
    model, params, accuracy, (x, y) = trained
    assert accuracy > 0.9
    logits, features = evaluation.classifier_outputs(model, params, x, batch_size=100)
    assert logits.shape == (len(x), 10) and features.shape == (len(x), model.feature_dim)
    assert evaluation.conditional_accuracy(logits, y) == pytest.approx(accuracy)


def test_fid_real_vs_real_is_near_floor_and_noise_is_far(trained):
    model, params, _, (x, y) = trained
    _, features = evaluation.classifier_outputs(model, params, x)
    half = len(x) // 2
    floor = evaluation.fid(features[:half], features[half : 2 * half])
    noise = np.random.default_rng(0).uniform(-1, 1, size=x[:half].shape).astype(np.float32)
    _, noise_features = evaluation.classifier_outputs(model, params, noise)
    far = evaluation.fid(features[:half], noise_features)
    # One class only: a mode-collapsed generator must also be far from the real set.
    _, ones = evaluation.classifier_outputs(model, params, x[y == 1])
    collapsed = evaluation.fid(features[:half], ones)
    assert far > 10 * floor and collapsed > 3 * floor


def test_classifier_cache_round_trip(tmp_path, digits):
    images, labels = digits
    x, y = images[:200], labels[:200]
    heldout = (images[200:300], labels[200:300])
    model = Classifier(num_classes=10, channels=(8,), feature_dim=16)
    kwargs = dict(steps=5, seed=0, heldout=heldout, model=model)
    params, acc, path, loaded = evaluation.load_or_train_feature_classifier(
        tmp_path, x, y, **kwargs
    )
    assert not loaded and path.exists()
    params2, acc2, path2, loaded2 = evaluation.load_or_train_feature_classifier(
        tmp_path, x, y, **kwargs
    )
    assert loaded2 and path2 == path and acc2 == acc
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, b)
    # Other data: another cache entry, never the stale one.
    _, _, path3, loaded3 = evaluation.load_or_train_feature_classifier(
        tmp_path, x[::-1], y[::-1], **kwargs
    )
    assert not loaded3 and path3 != path


def test_noise_conditioned_classifier_takes_timesteps():
    model = Classifier(num_classes=3, channels=(8,), feature_dim=8, num_timesteps=10)
    x = jnp.zeros((2, 8, 8, 1))
    t = jnp.array([0, 9])
    params = model.init(jax.random.key(0), x, t)["params"]
    logits = model.apply({"params": params}, x, t)
    assert logits.shape == (2, 3)
    # Same image, different noise levels: the timestep really enters the logits.
    assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-6
    with pytest.raises(ValueError, match="timesteps"):
        model.apply({"params": params}, x)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A workdir with an untrained tiny class-conditional UNet saved at step 0."""
    from configs import digits as digits_config
    from experiments.runs import builders, kinds
    from jaxdiff import checkpoint

    config = digits_config.get_config()
    config.model.update(block_out_channels=(8, 8), attention_levels=(), mid_attention=False,
                        norm_num_groups=4)
    config.diffusion.num_timesteps = 4
    workdir = tmp_path_factory.mktemp("run")
    model = kinds.build_model(config)
    state = builders.init_state(
        config, model, builders.build_optimizer(config), jax.random.key(0)
    )
    manager = checkpoint.make_manager(workdir, async_save=False)
    checkpoint.save(manager, 0, state=state, config=config, wait=True)
    manager.close()
    return workdir


def test_evaluate_sweep_writes_report(tiny_run):
    from experiments.runs import evaluation

    report = evaluation.evaluate(
        tiny_run, samplers=["ddim"], steps=[2], guidance=[0, 1], num=30, batch_size=16,
        max_real=200, classifier_steps=10,
    )
    on_disk = json.loads((tiny_run / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(report) >= {"num_samples", "classifier", "real_fid_floor", "results"}
    assert report["num_samples"] == 30
    assert set(report["classifier"]) >= {"heldout_accuracy", "num_train", "num_heldout"}
    assert (report["classifier"]["num_train"], report["classifier"]["num_heldout"]) == (100, 100)
    settings = [(r["sampler"], r["steps"], r["guidance_scale"]) for r in report["results"]]
    assert settings == [("ddim", 2, 0.0), ("ddim", 2, 1.0)]
    for r in report["results"]:
        assert np.isfinite(r["fid"]) and 0.0 <= r["accuracy"] <= 1.0
        # An untrained model draws noise, far from real digits.
        assert r["fid"] > report["real_fid_floor"]
    table = (tiny_run / "eval.md").read_text()
    assert "| ddim | 2 | 1 |" in table and "floor" in table
    assert (tiny_run / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tiny_run / "feature_classifier").glob("*.npz"))  # cached for the next run


def test_sweep_settings():
    from configs import digits as digits_config
    from experiments.runs import evaluation
    from experiments.runtime import errors

    config = digits_config.get_config()
    T = config.diffusion.num_timesteps
    grid = evaluation.sweep_settings(config, ["ddpm", "ddim"], [10, 50], [0, 3], conditional=True)
    # DDPM walks all T steps once; only DDIM takes the step counts.
    assert grid == [("ddpm", T, 0.0), ("ddpm", T, 3.0), ("ddim", 10, 0.0), ("ddim", 10, 3.0),
                    ("ddim", 50, 0.0), ("ddim", 50, 3.0)]
    # An unconditional model has nothing to guide: guidance 0 only.
    assert evaluation.sweep_settings(config, ["ddim"], [10], [0, 3], conditional=False) == [
        ("ddim", 10, 0.0)
    ]
    with pytest.raises(errors.ConfigError, match="exceed"):
        evaluation.sweep_settings(config, ["ddim"], [T + 1], [0], conditional=True)


def test_default_sweep_is_quick_and_full_is_behind_a_flag():
    from configs import digits as digits_config
    from configs import digits_uncond
    from experiments.runs import evaluation

    config = digits_config.get_config()
    # The run's own preview sampler and steps, unguided and at its guidance scale.
    assert evaluation.default_sweep(config) == {
        "samplers": ("ddim",), "steps": (50,), "guidance": (0.0, 2.0)
    }
    assert evaluation.default_sweep(digits_uncond.get_config())["guidance"] == (0.0,)
    full = evaluation.default_sweep(config, full=True)
    grid = evaluation.sweep_settings(config, full["samplers"], full["steps"], full["guidance"],
                              conditional=True)
    assert len(grid) == 20  # DDPM at T x 4 scales + DDIM at 4 step counts x 4 scales
