"""The depth estimator: its loss against the numpy scores (Eigen et al. 2014 eq. 4), and a
small one trained with experiments.train on rendered scenes whose held-out error must be
well below that of predicting the mean depth."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scenes as scenes_config
from configs import scenes_depth_controlnet, scenes_depth_estimator
from experiments.runs import depth_estimator, hint_report, kinds, restore, sampling, train_loop
from experiments.runtime import errors
from jaxdiff import depth_estimation, hint_scores, scenes

# A 300-step training on 16x16 scenes must beat the mean-depth baseline's RMSE by this.
RMSE_FACTOR = 2.0


def tiny_estimator_config(steps=300):
    config = scenes_depth_estimator.get_config()
    config.data.update(image_size=16, num_scenes=1000, batch_size=32)
    config.model.update(block_out_channels=(16, 16), norm_num_groups=8)
    config.depth_estimator.update(eval_num=200)
    config.train.update(steps=steps, warmup_steps=20, ema_start_step=50, ema_decay=0.95,
                        log_every=50, sample_every=steps, checkpoint_every=steps)
    return config


def test_depth_loss_is_mse_plus_eigen_eq4():
    hint = np.asarray(scenes.load_scenes(4, size=8).hints)
    pred = np.clip(hint + np.random.default_rng(0).normal(0, 0.1, hint.shape), 0, 1)
    # A "network" that returns 2 h - 1 of the batch's own prediction, whatever its input.
    apply_fn = lambda variables, x, t, cond, train: variables["params"] * 2.0 - 1.0  # noqa: E731
    loss_fn = depth_estimation.make_depth_loss(apply_fn)
    loss, metrics = loss_fn(jnp.asarray(pred, jnp.float32),
                            {"image": jnp.zeros(hint.shape), "hint": hint}, jax.random.key(0))
    z_pred, z = hint_scores.hint_to_depth(pred), hint_scores.hint_to_depth(hint)
    eigen = hint_scores.scale_invariant_log_error(z_pred, z, lam=0.5).mean()
    np.testing.assert_allclose(loss, np.mean((pred - hint) ** 2) + eigen, rtol=1e-4)
    np.testing.assert_allclose(
        metrics["si_log"], hint_scores.scale_invariant_log_error(z_pred, z).mean(), rtol=1e-4
    )
    np.testing.assert_allclose(metrics["rmse"], np.sqrt(np.mean((pred - hint) ** 2)), rtol=1e-4)
    with pytest.raises(ValueError, match="'hint' entry"):
        loss_fn(jnp.zeros(hint.shape), {"image": jnp.zeros(hint.shape)}, jax.random.key(0))


@pytest.fixture(scope="module")
def estimator_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("estimator")
    config = tiny_estimator_config()
    assert kinds.kind_of(config).name == "depth_estimator"
    train_loop.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.mark.slow
def test_trained_estimator_beats_the_mean_depth_on_heldout_scenes(estimator_run):
    tmp_path = estimator_run
    history = json.loads((tmp_path / depth_estimator.EVAL_FILE).read_text())
    last = history[-1]
    assert last["step"] == 300 and last["num_images"] == 200
    baseline = last["mean_depth_baseline"]
    assert last["rmse"] * RMSE_FACTOR < baseline["rmse"], last
    assert last["si_log"] < baseline["si_log"], last

    # The restored estimator reproduces the error on the same held-out scenes.
    estimate, info = depth_estimator.load_estimator(str(tmp_path))
    heldout = scenes.load_scenes(200, size=16, seed=2)
    got = depth_estimator.depth_errors(
        estimate(heldout.images / 127.5 - 1.0), heldout.hints)
    np.testing.assert_allclose(got["rmse"], last["rmse"], rtol=1e-4)
    assert info["step"] == 300 and info["image_size"] == 16


def test_estimator_configs_are_checked(tmp_path):
    config = tiny_estimator_config()
    config.depth_estimator.eval_seed = 1
    with pytest.raises(errors.ConfigError, match="renders the training scenes again"):
        kinds.kind_of(config).validate(config, num_devices=1)
    config = tiny_estimator_config()
    config.data.source = "digits"
    with pytest.raises(errors.ConfigError, match="data.source='scenes'"):
        kinds.kind_of(config).validate(config, num_devices=1)
    with pytest.raises(errors.ConfigError, match="missing or unreadable"):
        depth_estimator.load_estimator(str(tmp_path / "nowhere"))


def tiny_scenes(config):
    """16x16 scenes, a two-level UNet of 8/16 channels, T=50, 2 steps: a base in seconds."""
    config.data.update(image_size=16, num_scenes=100, batch_size=8)
    config.model.update(block_out_channels=(8, 16), attention_levels=(), mid_attention=False,
                        norm_num_groups=4)
    config.diffusion.num_timesteps = 50
    config.train.update(steps=2, warmup_steps=0, ema_start_step=0, sample_every=1000,
                        checkpoint_every=2)
    config.sample.update(steps=3, num=4)
    return config


@pytest.mark.slow
def test_hints_from_data_on_a_depth_run_writes_its_score(tmp_path, capsys):
    estimator_run = tmp_path / "estimator"  # two steps: any estimator scores the samples
    config = tiny_estimator_config(steps=2)
    config.model.update(block_out_channels=(8, 16), norm_num_groups=4)
    config.data.num_scenes = 100
    train_loop.train_and_evaluate(config, str(estimator_run))
    train_loop.train_and_evaluate(tiny_scenes(scenes_config.get_config()), str(tmp_path / "base"))
    config = tiny_scenes(scenes_depth_controlnet.get_config())
    config.controlnet.update(base_workdir=str(tmp_path / "base"), hint_channels=(4,),
                             heldout=12)
    train_loop.train_and_evaluate(config, str(tmp_path / "depth"))

    sampling.sample(str(tmp_path / "depth"), hints_from_data=4, steps=3,
                    out=str(tmp_path / "none"))
    assert "no score without a depth estimator" in capsys.readouterr().out
    assert not (tmp_path / "none" / "hint_report.json").exists()

    result = sampling.sample(str(tmp_path / "depth"), hints_from_data=4, steps=3,
                             out=str(tmp_path / "a"), depth_estimator=str(estimator_run))
    report = json.loads((tmp_path / "a" / "hint_report.json").read_text())
    assert report == result["report"] and report["score"] == "depth_rmse"
    assert report["depth_estimator"]["workdir"] == str(estimator_run)
    # The same score from the saved (uint8) samples and hints, by the restored estimator.
    saved = np.load(tmp_path / "a" / "samples.npz")
    estimate, _ = depth_estimator.load_estimator(str(estimator_run))
    rmse = hint_scores.depth_rmse(estimate(saved["images"] / 127.5 - 1.0), saved["hints"])
    np.testing.assert_allclose(report["controlnet"], rmse.mean(), atol=0.01)
    assert report["controlnet_scores"]["si_log"] >= 0 and report["base"] > 0
    # The run without an estimator kept its samples and the base's: any estimator (here
    # the same one, as a plain function) scores them later, as it scored them above.
    run_config = restore.load_run_config(str(tmp_path / "depth"))
    later = hint_report.rescore(tmp_path / "none", run_config, estimate_depth=estimate)
    for key in ("controlnet", "base"):
        np.testing.assert_allclose(later[key], report[key], atol=0.01)

    with pytest.raises(errors.ConfigError, match="reads 16x16 images, these are 8x8"):
        depth_estimator.load_estimator(str(estimator_run), image_size=8)
