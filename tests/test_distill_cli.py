"""End-to-end: experiments/distill.py on a tiny digits teacher (8x8, T=16, v-prediction):
rounds 4 -> 2 -> 1 steps, a kill mid-round resumes bit-identically, students sample at their
own step count only. The runs are marked slow (a teacher, two rounds, and a resumed copy)."""

import importlib
import json
import shutil
import types

import jax
import numpy as np
import pytest
from test_cli import tiny_config

from configs import digits_distill
from experiments.runs import (
    builders,
    distillation,
    kinds,
    restore,
    sampling,
    train_loop,
    validation,
)
from experiments.runtime import errors
from jaxdiff import checkpoint


def tiny_distill_config(teacher_workdir):
    config = digits_distill.get_config()
    config.data.update(resize_to=None, image_size=8, batch_size=8)
    config.distill.update(teacher_workdir=str(teacher_workdir), start_steps=4)
    config.train.update(steps=4, log_every=1, sample_every=4, checkpoint_every=2)
    config.sample.num = 1
    return config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    config = tiny_config()
    config.diffusion.update(prediction="v", num_timesteps=16)
    config.train.steps = 2
    train_loop.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distilled")
    distillation.distill(tiny_distill_config(teacher), str(workdir))
    return workdir


def final_state(workdir):
    config = restore.load_run_config(workdir)
    model = kinds.build_model(config)
    return restore.restore_for_sampling(config, str(workdir), model)


@pytest.mark.slow
def test_rounds_write_students_grids_and_timings(distilled):
    rounds = json.loads((distilled / "distill.json").read_text())["rounds"]
    assert [r["student_steps"] for r in rounds] == [2, 1]
    assert all(r["seconds"] > 0 and r["train_steps"] == 4 for r in rounds)
    for n in (2, 1):
        student = distilled / f"steps_{n:03d}"
        assert (student / "samples" / "step_0000004.png").exists()
        assert list(checkpoint.make_manager(student, read_only=True).all_steps()) == [2, 4]
        saved = restore.load_run_config(student)
        assert saved.distill.student_steps == n and saved.sample.steps == n
        assert saved.sample.spacing == "trailing" and saved.sample.guidance_scale == 0
        assert saved.diffusion.num_timesteps == 16 and saved.diffusion.prediction == "v"
    # Round 2 starts from round 1's EMA params, so its students differ from the teacher's.
    params_2, _, _ = final_state(distilled / "steps_002")
    params_1, _, _ = final_state(distilled / "steps_001")
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), params_2, params_1)))


@pytest.mark.slow
def test_kill_mid_round_resumes_bit_identically(distilled, teacher, tmp_path):
    """What SIGKILL in round 2 after its step-2 save leaves: round 1 finished, round 2's newest
    checkpoint at step 2. Running again must give the uninterrupted run's bits."""
    killed = tmp_path / "killed"
    shutil.copytree(distilled, killed)
    shutil.rmtree(checkpoint.checkpoint_dir(killed / "steps_001") / "4")
    marker = json.loads((killed / "distill.json").read_text())
    marker["rounds"] = marker["rounds"][:1]
    (killed / "distill.json").write_text(json.dumps(marker))
    assert final_state(killed / "steps_001")[2] == 2
    distillation.distill(tiny_distill_config(teacher), str(killed))
    for n in (2, 1):
        straight, resumed = final_state(distilled / f"steps_{n:03d}"), final_state(
            killed / f"steps_{n:03d}"
        )
        assert resumed[2] == straight[2] == 4
        jax.tree.map(np.testing.assert_array_equal, resumed[:2], straight[:2])
    # The same loss curve too (metrics.jsonl without its timing fields).
    curve = lambda w: [
        {k: v for k, v in json.loads(line).items() if "per_s" not in k}
        for line in (w / "steps_001" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(curve(killed)) == 4 and curve(killed) == curve(distilled)


@pytest.mark.slow
def test_sample_a_student_at_its_step_count(distilled, tmp_path):
    result = sampling.sample(str(distilled), steps=1, num=1, out=str(tmp_path / "one"))
    assert result["images"].shape == (10, 8, 8, 1)
    with pytest.raises(errors.ConfigError, match=r"students for \[2, 1\] steps"):
        sampling.sample(str(distilled), steps=3)
    with pytest.raises(errors.ConfigError, match="2-step distilled student"):
        sampling.sample(str(distilled / "steps_002"), steps=4)


def test_round_steps_halve_to_one_and_must_nest():
    assert distillation.round_steps(16, 256) == [8, 4, 2, 1]
    for bad in (6, 1, 512):
        with pytest.raises(errors.ConfigError, match="power of two"):
            distillation.round_steps(bad, 256)


@pytest.mark.parametrize("name", ["digits_v", "mnist_v"])
def test_teacher_configs_have_nesting_grids(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    validation.validate_config(config, num_devices=1)
    assert config.diffusion.prediction == "v" and config.diffusion.schedule == "cosine"
    assert distillation.round_steps(128, config.diffusion.num_timesteps) == [64, 32, 16, 8, 4, 2, 1]


def rounds_seen(monkeypatch, tmp_path, *, prediction="v", guidance_scale=2.0):
    """Runs ``distill`` with the training replaced by a recorder: what each round's loss,
    teacher and student were built from. The teacher's raw and EMA params are told apart by
    their values, and round k's "trained" EMA is the teacher's EMA + k."""
    teacher_config = tiny_config()
    teacher_config.diffusion.update(prediction=prediction, num_timesteps=16)
    model = kinds.build_model(teacher_config)
    optimizer = kinds.kind_of(teacher_config).build_optimizer(teacher_config)
    ema = builders.init_state(teacher_config, model, optimizer, jax.random.key(0)).params
    raw = jax.tree.map(lambda x: x - 100.0, ema)
    seen = {"loss": [], "teacher": [], "init": []}
    monkeypatch.setattr(restore, "load_run_config", lambda workdir: teacher_config)
    monkeypatch.setattr(restore, "restore_for_sampling", lambda c, w, m: (raw, ema, 7))
    monkeypatch.setattr(distillation, "denoise_fn",
                        lambda model, params: seen["teacher"].append(params) or (lambda *a: a[0]))
    monkeypatch.setattr(distillation.distillation, "make_progressive_distillation_loss",
                        lambda *a, **kw: seen["loss"].append(kw) or (lambda *a: 0.0))

    def train(config, workdir, *, kind, desc):
        seen["init"].append(kind.init_params)
        return types.SimpleNamespace(opt_state=len(seen["init"]))  # the round's number

    monkeypatch.setattr(distillation.train_loop, "train_and_evaluate", train)
    monkeypatch.setattr(distillation.optim, "ema_params",
                        lambda k: jax.tree.map(lambda x: x + k, ema))
    config = tiny_distill_config(tmp_path / "teacher")
    config.distill.guidance_scale = guidance_scale
    distillation.distill(config, str(tmp_path / "distilled"))
    return ema, seen


def test_each_round_starts_from_the_previous_students_ema_and_only_the_first_is_guided(
    monkeypatch, tmp_path
):
    ema, seen = rounds_seen(monkeypatch, tmp_path)
    assert [kw["num_student_steps"] for kw in seen["loss"]] == [2, 1]
    assert [kw["teacher_guidance_scale"] for kw in seen["loss"]] == [2.0, 0.0]
    # Round 1: the teacher's EMA params teach and initialise; round 2: round 1's student EMA.
    for k, want in enumerate([ema, jax.tree.map(lambda x: x + 1, ema)]):
        jax.tree.map(np.testing.assert_array_equal, seen["teacher"][k], want)
        jax.tree.map(np.testing.assert_array_equal, seen["init"][k], want)


def test_an_eps_prediction_teacher_is_refused(monkeypatch, tmp_path):
    with pytest.raises(errors.ConfigError, match="predicts eps.*Salimans & Ho"):
        rounds_seen(monkeypatch, tmp_path, prediction="eps")
