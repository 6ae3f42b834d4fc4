"""Offline end to end: a digits-sized model exported to a diffusers pipeline folder,
re-imported with ``--config.init_from``, fine-tuned on a folder of PNGs written from the
real MNIST test split (class sub-folders as labels), with samples before and after."""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from test_pretrained import _expected
from test_unet import random_params

from configs import digits, faces_finetune
from experiments.runs import finetune, sampling, train_loop
from experiments.runtime import errors
from jaxdiff import pretrained, sources
from jaxdiff.models.unet import UNet

ROOT = pathlib.Path(__file__).resolve().parents[1]

DIGITS_UNET = dict(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,),
                   norm_num_groups=4, attention_head_dim=8, num_classes=10)


@pytest.fixture
def mnist_pngs(tmp_path, mnist_dir):
    """40 digits of the real MNIST test split as PNGs in one sub-folder per class."""
    root = tmp_path / "mnist_png"
    root.mkdir()
    test = sources.load_idx(mnist_dir, split="test")
    for i in range(40):
        record = test[i]
        (root / str(record["label"])).mkdir(exist_ok=True)
        cv2.imwrite(str(root / str(record["label"]) / f"{i:05d}.png"), record["image"])
    return root


@pytest.mark.slow
def test_export_import_finetune_sample(tmp_path, mnist_pngs):
    model = UNet(**DIGITS_UNET)
    params = random_params(_expected(model, 1, 16), seed=3)
    sched = pretrained.scheduler_config(schedule="cosine", num_timesteps=50, prediction="eps")
    folder = pretrained.save_diffusers_pipeline(model, params, tmp_path / "digits_pipeline",
                                                scheduler_config=sched, sample_size=16)

    before = sampling.sample(None, pretrained=str(folder), steps=4, num=1,
                               out=str(tmp_path / "before"))
    assert before["images"].shape == (10, 16, 16, 1) and before["grid"].exists()

    config = digits.get_config()
    config.init_from = str(folder)
    config.data.update(source="folder", path=str(mnist_pngs), class_folders=True,
                       image_size=16, resize_to=None, batch_size=8)
    config.finetune.update(learning_rate=1e-3, frozen="down_blocks_0,time_embedding")
    config.train.update(steps=3, warmup_steps=0, log_every=3, sample_every=1000,
                        checkpoint_every=3, ema_start_step=0, ema_decay=0.0)
    config.sample.update(steps=4, num=1)
    workdir = tmp_path / "run"
    state = train_loop.train_and_evaluate(config, str(workdir))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["diffusion"]["schedule"] == "cosine" and saved["diffusion"]["num_timesteps"] == 50
    assert saved["model"]["block_out_channels"] == [8, 16]
    assert saved["train"]["learning_rate"] == 1e-3
    new = jax.device_get(state.params)
    for part in ("down_blocks_0", "time_embedding"):  # frozen: bit for bit the import
        for a, b in zip(jax.tree.leaves(params[part]), jax.tree.leaves(new[part]), strict=True):
            np.testing.assert_array_equal(a, b)
    moved = [float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(params["mid_block"]), jax.tree.leaves(new["mid_block"]), strict=True)]
    assert min(moved) > 0, moved

    after = sampling.sample(str(workdir), steps=4, num=1, out=str(tmp_path / "after"))
    assert after["images"].shape == (10, 16, 16, 1)
    assert np.abs(after["images"].astype(int) - before["images"]).mean() > 1


def test_frozen_prefix_that_matches_nothing_is_a_config_error():
    params = {"conv_in": {"kernel": np.zeros(1)}, "mid_block": {"bias": np.zeros(1)}}
    mask = finetune.frozen_mask(params, "mid_block")
    assert mask == {"conv_in": {"kernel": False}, "mid_block": {"bias": True}}
    with pytest.raises(errors.ConfigError, match=r"match no parameter.*conv_in"):
        finetune.frozen_mask(params, "down_blocks")


def test_faces_config_without_the_pipeline_stops_with_one_line(tmp_path):
    config = faces_finetune.get_config()
    assert config.model.remat and config.data.source == "folder"
    assert config.finetune.learning_rate < config.train.learning_rate
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "configs/faces_finetune.py",
         "--workdir", str(tmp_path / "w"), f"--config.init_from={tmp_path / 'missing'}",
         f"--config.data.path={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "google/ddpm-celebahq-256" in lines[0], result.stderr
