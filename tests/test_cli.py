"""End-to-end: experiments/train.py and sample.py on a tiny class-conditional digits run.

Tiny settings (8x8 digits, a two-level UNet of 8/16 channels, T=50, batches of 8) keep the
file fast; train_and_evaluate runs in-process wherever a subprocess is not what is tested
(signals, the real command line).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import digits
from experiments.runs import builders, kinds, restore, sampling, train_loop
from experiments.runtime import errors
from jaxdiff import checkpoint, optim

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY_CONFIG = """
from configs import digits


def get_config():
    config = digits.get_config()
    config.data.update(resize_to=None, image_size=8, batch_size=8)
    config.model.update(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(),
                        mid_attention=False, norm_num_groups=4)
    config.diffusion.update(num_timesteps=50)
    config.train.update(steps=6, warmup_steps=0, ema_start_step=0, log_every=1,
                        sample_every=1000, checkpoint_every=3, keep_checkpoints=2)
    config.sample.update(steps=5, num=1)
    return config
"""


def tiny_config():
    namespace = {}
    exec(TINY_CONFIG, namespace)
    return namespace["get_config"]()


def losses(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in map(json.loads, lines)}


def user_error(capsys, config, workdir) -> str:
    """What `python -m experiments.train` prints for a user error (and that it exits 2)."""
    with pytest.raises(SystemExit) as info, errors.exit_on_user_error():
        train_loop.train_and_evaluate(config, str(workdir))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted 6-step run, with a preview grid at step 3."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    config = tiny_config()
    config.train.sample_every = 3
    train_loop.train_and_evaluate(config, str(workdir))
    return workdir


def test_run_writes_metrics_samples_and_the_last_checkpoints(trained):
    assert sorted(losses(trained)) == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(v).all() for v in losses(trained).values())
    grid = Image.open(trained / "samples" / "step_0000003.png")
    assert grid.size[0] > 8 and grid.size[1] >= 10 * 8  # one row per class
    assert list(checkpoint.make_manager(trained, read_only=True).all_steps()) == [3, 6]
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((trained / "config.json").read_text())["train"]["steps"] == 6


@pytest.mark.slow
def test_stop_and_resume_gives_the_same_loss_curve(trained, tmp_path):
    config = tiny_config()
    config.train.steps = 4  # stops between two checkpoints: resumes from its final save
    train_loop.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "samples" / "step_0000004.png").exists()  # < sample_every: still a grid
    config.train.steps = 6
    train_loop.train_and_evaluate(config, str(tmp_path))
    resumed, straight = losses(tmp_path), losses(trained)
    assert sorted(resumed) == sorted(straight)
    for step in straight:  # same batches, keys, params and optimizer state after the resume
        np.testing.assert_allclose(resumed[step], straight[step], rtol=1e-6, err_msg=f"{step=}")


def run_cli(module, *args):
    """Runs ``python -m module args`` to completion: (returncode, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def launch(tmp_path, workdir, *overrides):
    config_file = tmp_path / "tiny.py"
    config_file.write_text(TINY_CONFIG)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={config_file}",
        f"--workdir={workdir}",
        "--config.train.steps=100000",
        *overrides,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_steps(process, workdir, steps, timeout=90.0):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        if process.poll() is not None:
            pytest.fail(f"training exited early: {process.communicate()[1][-2000:]}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no {steps} steps within {timeout} s")


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = tmp_path / "run"
    process = launch(tmp_path, workdir, "--config.train.checkpoint_every=1000")
    wait_for_steps(process, workdir, 3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "stopped by SIGTERM" in err and "checkpoint saved" in err
    manager = checkpoint.make_manager(workdir, read_only=True)
    assert manager.latest_step() == max(losses(workdir))  # the step it stopped at
    assert manager.latest_step() >= 3


@pytest.mark.slow
def test_sigkill_loses_at_most_checkpoint_every_steps(tmp_path):
    workdir = tmp_path / "run"
    process = launch(tmp_path, workdir, "--config.train.checkpoint_every=2")
    wait_for_steps(process, workdir, 5)
    process.kill()  # SIGKILL: no handler runs, a save may be half-written
    process.communicate(timeout=30)
    config = tiny_config()
    model = kinds.build_model(config)
    params, ema, step = restore.restore_for_sampling(config, str(workdir), model)
    assert max(losses(workdir)) - step <= 2
    assert step >= 4
    leftovers = [
        p.name for p in checkpoint.checkpoint_dir(workdir).iterdir() if not p.name.isdigit()
    ]
    assert all("tmp" in name for name in leftovers), leftovers  # never a readable half-save


def test_sample_cli_writes_png_gif_and_npz(trained, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "experiments.sample",
        f"--workdir={trained}",
        "--sampler=ddim",
        "--steps=5",
        "--guidance_scale=1.5",
        "--labels=3,5",
        "--num=2",
        f"--out={out}",
        "--compare=ddpm_no_noise",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sampled 4 images with ddim" in result.stdout
    saved = np.load(out / "samples.npz")
    assert saved["images"].shape == (4, 8, 8, 1) and saved["images"].dtype == np.uint8
    np.testing.assert_array_equal(saved["labels"], [3, 3, 5, 5])
    # 2x2 grid of 8x8 images shown 6x larger (viz.display_scale), padding 2.
    assert Image.open(out / "grid.png").size == (2 * 50 + 2, 2 * 50 + 2)
    gif = Image.open(out / "denoising.gif")
    assert gif.n_frames > 1
    # The right and the wrong sampler from the same noise, side by side.
    assert "ddim | ddpm_no_noise, same initial noise" in result.stdout
    assert Image.open(out / "compare.png").size[0] > 2 * (2 * 50 + 2)


def test_unknown_config_field_on_the_command_line(tmp_path):
    result = run_cli(
        "experiments.train",
        "--config=configs/digits.py",
        f"--workdir={tmp_path}",
        "--config.train.stepz=3",
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: --config.train.stepz: the config has no field 'train.stepz' "
            "(did you mean --config.train.steps?)"
        )
    )
    assert "Traceback" not in result.stderr


def test_wrong_value_is_a_one_line_error(tmp_path, capsys):
    config = tiny_config()
    config.train.steps = 0
    assert user_error(capsys, config, tmp_path) == (
        "error: train.steps must be a positive integer, got 0"
    )


def test_checkpoint_that_does_not_fit_names_the_config_fields(trained, capsys):
    config = tiny_config()
    config.model.block_out_channels = (8, 32)
    err = user_error(capsys, config, trained)
    assert "does not fit this config" in err
    assert "model.block_out_channels: [8, 16] (saved) != [8, 32] (now)" in err
    assert "in the checkpoint, " in err and "new --workdir" in err


def test_missing_npy_file(tmp_path, capsys):
    config = tiny_config()
    config.data.update(source="npy", images_path=str(tmp_path / "sprites.npy"))
    err = user_error(capsys, config, tmp_path / "run")
    assert "sprites.npy not found" in err and "--config.data.images_path" in err


def test_tfds_offline_names_the_ways_out(tmp_path, capsys, monkeypatch):
    from jaxdiff.sources import tfds_source

    # No network in tests: every host is unreachable and there is no proxy.
    monkeypatch.setattr(tfds_source, "_reachable", lambda host, **kw: False)
    monkeypatch.setattr("urllib.request.getproxies", lambda: {})
    config = tiny_config()
    config.data.update(
        source="tfds",
        name="mnist",
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(tmp_path / "manual"),
    )
    err = user_error(capsys, config, tmp_path / "run")
    for hint in ("--config.data.manual_dir", "TFDS_DATA_DIR", "configs/digits.py"):
        assert hint in err


def test_sample_without_checkpoint(tmp_path, capsys):
    from experiments.runtime import errors

    with pytest.raises(SystemExit), errors.exit_on_user_error():
        sampling.sample(str(tmp_path))
    assert "no complete checkpoint" in capsys.readouterr().err


def test_digits_default_is_the_documented_run():
    config = digits.get_config()
    assert config.data.source == "digits" and config.sample.guidance_scale > 0
    assert config.model.num_classes == 10


def test_sampling_reads_params_and_ema_only(trained, monkeypatch):
    """restore_for_sampling leaves the optimizer's moments (2x the model) on disk and gets
    the same params and EMA as a full restore."""
    config = tiny_config()
    model = kinds.build_model(config)
    asked = []
    real_restore = checkpoint.restore
    monkeypatch.setattr(checkpoint, "restore", lambda manager, **kw: (
        asked.append(kw["state"]) or real_restore(manager, **kw)))
    params, ema, step = restore.restore_for_sampling(config, str(trained), model)
    read = [x for x in jax.tree.leaves(asked[0]) if x is not checkpoint.SKIP]
    assert len(read) == 2 * len(jax.tree.leaves(params)) and step == 6
    monkeypatch.undo()
    optimizer = builders.build_optimizer(config)
    full = jax.eval_shape(lambda: builders.init_state(config, model, optimizer, jax.random.key(0)))
    manager = checkpoint.make_manager(trained, read_only=True)
    state, _ = checkpoint.restore(manager, state=full, config=config)
    manager.close()
    jax.tree.map(np.testing.assert_array_equal, (params, ema),
                 (state.params, optim.ema_params(state.opt_state)))
