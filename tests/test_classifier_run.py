"""The noise-conditioned classifier end to end: its loss, training it with experiments.train
(accuracy by noise level, exact resume, clean errors), and guiding experiments.sample /
evaluate with it (schedules must match)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits, digits_classifier, digits_uncond
from experiments.runs import (
    builders,
    classifier,
    evaluation,
    kinds,
    sampling,
    train_loop,
    validation,
)
from experiments.runtime import errors
from jaxdiff import checkpoint, losses, schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]
T = 20
# The trained pair of the guidance test: steps of each run, and the classifier scales.
GUIDED_STEPS = 600
GUIDE_SCALES = [0.0, 4.0, 10.0]


def tiny(config):
    """8x8 digits, T=20, a one-level model: seconds to build and run."""
    config.data.update(resize_to=None, image_size=8, batch_size=16)
    config.diffusion.num_timesteps = T
    if config.model.name == "classifier":
        config.model.update(channels=(8, 16), feature_dim=16, num_groups=4)
        config.noise_eval.update(num_images=32, levels=4)
    else:
        config.model.update(block_out_channels=(8, 8), attention_levels=(),
                            mid_attention=False, norm_num_groups=4)
    config.train.update(steps=6, warmup_steps=0, ema_start_step=0, log_every=1,
                        sample_every=3, checkpoint_every=3)
    config.sample.update(steps=3, num=2)
    return config


def save_untrained(config, workdir):
    """A workdir holding ``config``'s freshly initialised model at step 0."""
    model = kinds.build_model(config)
    state = builders.init_state(config, model, builders.build_optimizer(config),
                                   jax.random.key(0))
    manager = checkpoint.make_manager(workdir, async_save=False)
    checkpoint.save(manager, 0, state=state, config=config, wait=True)
    manager.close()
    return workdir


# --------------------------------------------------------------------------- the loss


def test_loss_is_cross_entropy_on_q_sample():
    """Constant logits L give exactly mean_i -log softmax(L)[y_i]; the x_t the classifier
    sees has q(x_t | x0)'s mean sqrt(alpha_bar_t) x0 at its own t, t spread over [0, T)."""
    schedule = schedules.cosine(T)
    x0 = jnp.full((64, 16, 16, 1), 0.8)
    labels = jnp.arange(64, dtype=jnp.int32) % 3
    fixed = jnp.array([0.5, -1.0, 2.0])
    seen = []

    def apply_fn(variables, x_t, t, train):
        assert train
        seen.append((np.asarray(x_t), np.asarray(t)))
        return jnp.broadcast_to(fixed, (x_t.shape[0], 3))

    loss_fn = losses.make_noisy_classifier_loss(apply_fn, schedule)
    loss, metrics = loss_fn({}, {"image": x0, "label": labels}, jax.random.key(0))
    expected = -np.mean(np.asarray(jax.nn.log_softmax(fixed))[np.asarray(labels)])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(np.asarray(labels) == 2))
    x_t, t = seen[0]
    assert t.min() >= 0 and t.max() < T and len(np.unique(t)) > T // 2
    ab = np.asarray(schedule.alpha_bars)[t]
    # Per image: pixel mean sqrt(ab) 0.8 (+- 4 sigma / 16 of the noise), pixel std sqrt(1-ab).
    np.testing.assert_array_less(np.abs(x_t.mean((1, 2, 3)) - np.sqrt(ab) * 0.8),
                                 4 * np.sqrt(1 - ab) / 16 + 1e-6)
    np.testing.assert_allclose(x_t.std((1, 2, 3)), np.sqrt(1 - ab), rtol=0.3, atol=1e-3)
    with pytest.raises(ValueError, match="labelled data"):
        loss_fn({}, {"image": x0}, jax.random.key(0))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clf")
    train_loop.train_and_evaluate(tiny(digits_classifier.get_config()), str(workdir))
    return workdir


def test_training_writes_accuracy_by_noise_and_resumes_exactly(classifier_run, tmp_path):
    history = json.loads((classifier_run / "accuracy_by_noise.json").read_text())
    assert [h["step"] for h in history] == [3, 6]
    assert history[-1]["timesteps"] == [0, 6, 13, 19] and history[-1]["num_images"] == 32
    assert all(0.0 <= a <= 1.0 for a in history[-1]["accuracy"])
    assert (classifier_run / "accuracy_by_noise.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(x) for x in (classifier_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "accuracy"} <= set(records[0])
    # Stop at 3, resume to 6: the same losses as the straight run.
    config = tiny(digits_classifier.get_config())
    config.train.steps = 3
    train_loop.train_and_evaluate(config, str(tmp_path))
    config.train.steps = 6
    train_loop.train_and_evaluate(config, str(tmp_path))
    resumed = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records]


def test_config_errors(capsys, tmp_path):
    config = tiny(digits_classifier.get_config())
    config.diffusion.loss = "denoising"
    with pytest.raises(errors.ConfigError, match="do not go together"):
        validation.validate_config(config, num_devices=1)
    config = tiny(digits_classifier.get_config())
    config.model.num_timesteps = 7
    with pytest.raises(errors.ConfigError, match="leave model.num_timesteps unset"):
        kinds.build_model(config)


# --------------------------------------------------------------------------- guiding


def test_schedule_difference_names_the_fields():
    a, b = digits.get_config(), digits_classifier.get_config()
    assert classifier.schedule_difference(a, b) is None
    b.diffusion.update(schedule="linear", num_timesteps=1000)
    assert classifier.schedule_difference(a, b) == (
        "diffusion.schedule: 'cosine' (diffusion run) != 'linear' (classifier run); "
        "diffusion.num_timesteps: 200 (diffusion run) != 1000 (classifier run)"
    )
    a.diffusion.update(schedule="linear", num_timesteps=1000, beta_end=0.01)
    assert classifier.schedule_difference(a, b) == (
        "diffusion.beta_end: 0.01 (diffusion run) != 0.02 (classifier run)"
    )


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory):
    return save_untrained(tiny(digits_uncond.get_config()), tmp_path_factory.mktemp("uncond"))


def test_sample_guides_an_unconditional_run(uncond_run, classifier_run, tmp_path):
    from experiments.runtime import errors

    guided = sampling.sample(str(uncond_run), labels="0,2", num=2, classifier_scale=3.0,
                           classifier_workdir=str(classifier_run), out=str(tmp_path))
    saved = np.load(guided["npz"])
    np.testing.assert_array_equal(saved["labels"], [0, 0, 2, 2])
    assert saved["images"].shape == (4, 8, 8, 1)
    with pytest.raises(errors.ConfigError, match=r"--labels \[10\] are not in \[0, 10\)"):
        sampling.sample(str(uncond_run), labels="10", classifier_workdir=str(classifier_run))


def test_sample_cli_rejects_mismatched_schedules(uncond_run, tmp_path):
    config = tiny(digits_classifier.get_config())
    config.diffusion.num_timesteps = T + 5
    clf = save_untrained(config, tmp_path / "clf")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.sample", f"--workdir={uncond_run}",
         f"--classifier_workdir={clf}", "--classifier_scale=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: the classifier in {clf} was trained on another noise schedule than the "
        f"diffusion run: diffusion.num_timesteps: {T} (diffusion run) != {T + 5} (classifier "
        "run); train the classifier with the run's schedule (--config.diffusion.<field>=<value>)"
    ]


@pytest.mark.slow
def test_evaluate_sweeps_classifier_scales(uncond_run, classifier_run):

    report = evaluation.evaluate(
        uncond_run, samplers=["ddim"], steps=[3], guidance=[0], num=20, batch_size=20,
        max_real=100, classifier_steps=5, classifier_workdir=classifier_run,
        classifier_scales=[0, 5],
    )
    settings = [(r["guidance_scale"], r["classifier_scale"]) for r in report["results"]]
    assert settings == [(0.0, 0.0), (0.0, 5.0)]
    # Guided, the unconditional model's samples have target labels: an accuracy each.
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["results"])
    assert report["results"][0]["fid"] != report["results"][1]["fid"]
    assert "| ddim | 3 | 0 | 5 |" in (uncond_run / "eval.md").read_text()


# --------------------------------------------------------------------------- guidance works

@pytest.mark.slow
def test_a_trained_guide_steers_a_trained_model(tmp_path_factory):
    """Trained for real (8x8 digits, T=20): guiding the unconditional model with the
    noise-conditioned classifier must lift the feature classifier's accuracy on the target
    labels far above chance (0.1) while the samples stay digits (FID near the unguided
    one's). A guide that does nothing stays at chance, a gradient of the wrong sign lands
    below it, and a scale or gradient out of proportion wrecks the FID."""
    uncond = tiny(digits_uncond.get_config())
    uncond.model.update(block_out_channels=(16, 32), norm_num_groups=8)
    clf = tiny(digits_classifier.get_config())
    for config in (uncond, clf):
        config.data.batch_size = 64
        config.train.update(steps=GUIDED_STEPS, sample_every=GUIDED_STEPS,
                            checkpoint_every=GUIDED_STEPS, log_every=100, ema_decay=0.99)
    uncond_dir, clf_dir = (tmp_path_factory.mktemp(n) for n in ("guided_uncond", "guide"))
    train_loop.train_and_evaluate(uncond, str(uncond_dir))
    train_loop.train_and_evaluate(clf, str(clf_dir))
    report = evaluation.evaluate(
        uncond_dir, samplers=["ddim"], steps=[10], guidance=[0], num=200, batch_size=200,
        max_real=800, classifier_steps=300, classifier_workdir=clf_dir,
        classifier_scales=GUIDE_SCALES)
    results = report["results"]
    assert [r["classifier_scale"] for r in results] == GUIDE_SCALES
    accuracy, fid = ([r[k] for r in results] for k in ("accuracy", "fid"))
    # Measured: accuracy 0.175 / 0.445 / 0.565, FID 3.21 / 3.91 / 4.28 (real floor 1.16).
    assert report["classifier"]["heldout_accuracy"] > 0.9
    assert accuracy[0] < accuracy[1] < accuracy[2] and accuracy[2] >= 0.45
    assert accuracy[2] >= accuracy[0] + 0.25
    assert fid[2] <= 2.0 * fid[0] + 1.0
