"""experiments.evaluate --fid inception (experiments.runs.inception_eval) on a tiny untrained
run, with random Inception weights written as a .pth (needs torch to write it)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdiff import fid, inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state_dict_of(params):
    """The torch state dict (numpy values) of InceptionV3FID params: the inverse of
    ``inception.params_from_state_dict``."""
    names = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    out = {}
    for path, value in jax.tree_util.tree_leaves_with_path(params):
        keys = [p.key for p in path]
        value = np.asarray(value)
        if keys[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[".".join(keys[:-1] + [names.get(keys[-1], keys[-1])])] = value
    out["fc.weight"], out["fc.bias"] = np.zeros((1008, 2048), np.float32), np.zeros(1008)
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch = pytest.importorskip("torch")
    shapes = jax.eval_shape(inception.InceptionV3FID().init, jax.random.key(0),
                            np.zeros((1, 75, 75, 3)))["params"]
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        low, high = (0.5, 1.5) if path[-1].key in ("var", "scale") else (-0.2, 0.2)
        return rng.uniform(low, high, leaf.shape)

    params = jax.tree_util.tree_map_with_path(
        lambda p, x: np.asarray(draw(p, x), np.float32), shapes)
    path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict_of(params).items()},
               path)
    loaded = inception.load_pytorch_fid_weights(path)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)  # the round trip through torch is exact
    return path


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
    state = builders.init_state(config, model, builders.build_optimizer(config),
                                jax.random.key(0))
    manager = checkpoint.make_manager(workdir, async_save=False)
    checkpoint.save(manager, 0, state=state, config=config, wait=True)
    manager.close()
    return workdir


@pytest.mark.slow
def test_inception_fid_report(tiny_run, weights, tmp_path):
    from experiments.runs import inception_eval

    common = dict(inception_weights=str(weights), samplers=["ddim"], steps=[2], guidance=[0],
                  num=6, batch_size=6, max_real=6, feature_batch=6, fid_seeds=2,
                  command=["python", "-m", "experiments.evaluate", "--fid", "inception"])
    report = inception_eval.evaluate_inception(tiny_run, **common)
    assert json.loads((tiny_run / "eval_inception.json").read_text()) == json.loads(
        json.dumps(report))
    assert report["command"] == "python -m experiments.evaluate --fid inception"
    assert report["versions"]["jax"] == jax.__version__
    (r,) = report["results"]
    assert len(r["fid_per_seed"]) == 2 and r["fid_per_seed"][0] != r["fid_per_seed"][1]
    assert r["fid"] == pytest.approx(np.mean(r["fid_per_seed"]))
    assert r["fid_std"] == pytest.approx(np.std(r["fid_per_seed"], ddof=1))
    assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
    assert "| ddim | 2 | 0 |" in (tiny_run / "eval_inception.md").read_text()

    # The same real images as saved statistics give the same FIDs (without P&R).
    stats = inception_eval.save_reference_stats(tiny_run, tmp_path / "ref.npz",
                                                inception_weights=str(weights), max_real=6,
                                                feature_batch=6)
    # (One seed block: scipy's sqrtm of a 2048 x 2048 product takes most of this test.)
    again = inception_eval.evaluate_inception(tiny_run, ref_stats=str(stats),
                                              **dict(common, fid_seeds=1))
    (r2,) = again["results"]
    np.testing.assert_allclose(r2["fid_per_seed"], r["fid_per_seed"][:1], rtol=1e-6)
    assert r2["precision"] is None and again["reference"] == {"stats": str(stats)}
    mu, sigma = fid.load_stats(stats)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


def test_cli_needs_weights_for_inception(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--workdir", str(tmp_path),
         "--fid", "inception"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--fid inception needs --inception_weights" in result.stderr


def test_cli_missing_weights_file(tmp_path):
    # Checked first, before the run is read or anything sampled.
    result = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--workdir", str(tmp_path),
         "--inception_weights", str(tmp_path / "nope.pth")], cwd=ROOT, capture_output=True,
        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2, result.stderr[-2000:]
    assert inception.FID_WEIGHTS_URL in result.stderr
