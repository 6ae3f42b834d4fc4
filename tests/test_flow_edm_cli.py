"""Flow matching and EDM runs through the CLIs' code: the configs, the one-line error for a
sampler of the other formulation, the refusals of distillation and classifier guidance, and
(slow) a tiny run of each trained, sampled and evaluated."""

import importlib
import json

import numpy as np
import pytest

from experiments.runs import (
    builders,
    classifier,
    distillation,
    evaluation,
    formulations,
    kinds,
    sampling,
    train_loop,
    validation,
)
from experiments.runtime import errors

NEW_CONFIGS = ["digits_flow", "digits_edm", "mnist_flow", "mnist_edm", "digits_dit_flow"]


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_configs_validate_and_match_digits(name):
    config = load(name)
    validation.validate_config(config, num_devices=1)
    kinds.build_model(config)
    assert config.sample.sampler in formulations.SAMPLERS_OF_LOSS[config.diffusion.loss]
    base = load("mnist_idx" if name.startswith("mnist") else "digits")
    # Same data, steps, batch and optimizer as the DDPM run they are compared with.
    assert config.data.to_dict() == base.data.to_dict()
    for field in ("steps", "learning_rate", "ema_decay", "cond_drop_prob"):
        assert config.train[field] == load("digits_dit" if "dit" in name else "digits").train[
            field] or field == "learning_rate"
    if "dit" not in name:
        assert config.model.to_dict() == base.model.to_dict()


@pytest.mark.parametrize("name,wrong,fitting", [
    ("digits_flow", "ddim", "flow_euler or flow_heun"),
    ("digits_flow", "edm_heun", "flow_euler or flow_heun"),
    ("digits_edm", "flow_heun", "edm_heun"),
    ("digits", "flow_euler", "ddpm or ddpm_no_noise or ddim or dpm_solver_pp"),
])
def test_a_sampler_of_another_formulation_is_a_one_line_error(name, wrong, fitting):
    config = load(name)
    with pytest.raises(errors.ConfigError) as info:
        validation.validate_sampling(config, sampler=wrong, steps=8, eta=0.0,
                                     guidance_scale=1.0)
    message = str(info.value)
    assert "\n" not in message and wrong in message and message.endswith(f"use {fitting}")


def test_bad_formulation_fields_name_the_field():
    config = load("digits_flow")
    config.diffusion.time_sampling = "cosine"
    with pytest.raises(errors.ConfigError, match="diffusion.time_sampling"):
        validation.validate_config(config, num_devices=1)
    config = load("digits_edm")
    config.diffusion.sigma_min = 100.0
    with pytest.raises(errors.ConfigError, match="sigma_min"):
        validation.validate_config(config, num_devices=1)


def test_classifier_guidance_and_distillation_refuse_flow_and_edm_runs(tmp_path, monkeypatch):
    for name in ("digits_flow", "digits_edm"):
        config = load(name)
        with pytest.raises(errors.ConfigError, match=f"diffusion.loss='{config.diffusion.loss}'"):
            classifier.validate_guidance(config, sampler=config.sample.sampler, scale=1.0)
        # The teacher's saved config is this one (no checkpoint needed to be refused).
        monkeypatch.setattr(distillation.restore, "load_run_config",
                            lambda workdir, config=config: config)
        distill_config = load("digits_distill")
        distill_config.distill.teacher_workdir = str(tmp_path / name)
        with pytest.raises(errors.ConfigError, match="progressive distillation takes a "
                                                     "denoising"):
            distillation.distill(distill_config, str(tmp_path / "pd"))


TINY = dict(resize_to=None, image_size=8, batch_size=8)


def tiny(name):
    config = load(name)
    config.data.update(**TINY)
    config.model.update(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(),
                        mid_attention=False, norm_num_groups=4)
    config.train.update(steps=4, warmup_steps=0, ema_start_step=0, log_every=1,
                        sample_every=4, checkpoint_every=4, keep_checkpoints=1)
    config.sample.update(steps=2, num=1)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name,samplers", [("digits_flow", ["flow_euler", "flow_heun"]),
                                           ("digits_edm", ["edm_heun"])])
def test_tiny_run_trains_samples_and_evaluates(name, samplers, tmp_path):
    workdir = tmp_path / name
    train_loop.train_and_evaluate(tiny(name), str(workdir))
    assert (workdir / "samples" / "step_0000004.png").exists()  # the preview's sampler
    losses = [json.loads(line)["loss"] for line in
              (workdir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    result = sampling.sample(str(workdir), sampler=samplers[-1], steps=3, guidance_scale=2.0,
                             labels="3,5", num=2, out=str(tmp_path / "out"))
    assert result["images"].shape == (4, 8, 8, 1)
    report = evaluation.evaluate(str(workdir), samplers=samplers, steps=[2], guidance=[0, 2],
                                 num=10, batch_size=10, max_real=60, classifier_steps=5)
    assert [(r["sampler"], r["guidance_scale"]) for r in report["results"]] == [
        (s, w) for s in samplers for w in (0.0, 2.0)]
    assert all(np.isfinite(r["fid"]) for r in report["results"])
    # CFG changes the samples (the label-dropped model is trained for both halves).
    assert report["results"][0]["fid"] != report["results"][1]["fid"]
    assert builders.build_schedule(tiny(name)).num_timesteps == 200  # unused, still built
