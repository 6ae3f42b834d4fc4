"""A new user's first hour: hints for mistyped config fields and workdirs, a
progress bar over finished steps and a warning for runs on CPU that would take hours.
(The sample grid at the end of every run is checked in test_cli.py's resumed 4-step run.)"""

import io
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags
from test_cli import tiny_config, user_error

from configs import digits
from experiments.runs import restore
from experiments.runtime import errors, progress, user_input


def test_suggest_field_searches_every_section():
    config = digits.get_config()
    assert user_input.suggest_field(config, "train.batch_size") == "data.batch_size"
    assert user_input.suggest_field(config, "train.stepz") == "train.steps"
    assert user_input.suggest_field(config, "sample.guidance") == "sample.guidance_scale"
    assert user_input.suggest_field(config, "model.num_clases") == "model.num_classes"
    assert user_input.suggest_field(config, "zzz.qqq") is None


@pytest.mark.parametrize(
    "override, hint",
    [
        ("--config.train.batch_size=3", "did you mean --config.data.batch_size?"),  # no such
        ("--config.train.stepz=3", "did you mean --config.train.steps?"),  # ConfigDict's own
    ],
)
def test_unknown_field_on_the_command_line_names_the_right_one(override, hint, capsys, monkeypatch):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values)
    argv = ["train", "--config=configs/digits.py", override]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    with pytest.raises(SystemExit) as info:
        errors.parse_flags(argv, flag_values)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {override.split('=')[0]}: ")
    assert hint in err


def test_workdir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not a run")
    err = user_error(capsys, tiny_config(), path)
    assert err == (
        f"error: --workdir {path} is a file, not a directory; give a new directory (it is "
        "created) or one that an earlier run wrote"
    )
    assert f"lies below {path}, which is a file" in user_error(capsys, tiny_config(), path / "run")
    with pytest.raises(NotADirectoryError, match="is a file"):
        restore.load_run_config(path)  # what sample.py and evaluate.py call first


def test_progress_bar_shows_finished_steps_only():
    slow = jax.jit(lambda x: jnp.linalg.matrix_power(x @ x.T, 64).sum())
    x = jnp.eye(400) * 0.5
    lazy = progress.Progress(total=10, initial=0, interval=1e9, file=io.StringIO())
    lazy.update(1, slow(x))
    assert lazy.bar.n == 0  # between refreshes: no block, no advance
    eager = progress.Progress(total=10, initial=0, interval=0.0, file=io.StringIO())
    result = slow(x + 1)
    eager.update(1, result)
    assert result.is_ready() and eager.bar.n == 1  # advanced only once the step finished
    eager.update(4, slow(x + 2))
    assert eager.bar.n == 4


def test_runtime_warning_on_cpu_runs_longer_than_an_hour():
    warning = progress.runtime_warning(seconds_per_step=6.3, remaining_steps=20_000, backend="cpu")
    assert "about 35 h 0 min more on this CPU (20000 steps at 6.30 s/step)" in warning
    assert "configs/digits.py" in warning and "GPU" in warning
    short = progress.runtime_warning(seconds_per_step=6.3, remaining_steps=500, backend="cpu")
    gpu = progress.runtime_warning(seconds_per_step=6.3, remaining_steps=20_000, backend="gpu")
    assert short is None and gpu is None
    assert progress.format_duration(2520) == "42 min" and progress.format_duration(40) == "40 s"


def test_progress_estimates_from_steps_after_the_compile():
    now, lines = [0.0], []
    bar = progress.Progress(total=1000, initial=0, interval=0.0, backend="cpu",
                            file=io.StringIO(), clock=lambda: now[0], write=lines.append)
    for step, seconds in [(1, 30.0), (2, 36.0), (3, 42.0), (4, 48.0), (5, 54.0)]:
        now[0] = seconds  # a 30 s compile, then 6 s per step
        bar.update(step, jnp.zeros(()))
    assert len(lines) == 1 and "about 1 h 40 min more" in lines[0]  # 997 steps x 6 s, once
    assert "(997 steps at 6.00 s/step)" in lines[0]


def test_a_disabled_bar_gives_no_estimate():
    # Processes other than 0 run a disabled bar: one warning per run, not one per process.
    now, lines = [0.0], []
    bar = progress.Progress(total=1000, initial=0, interval=0.0, backend="cpu", disable=True,
                            clock=lambda: now[0], write=lines.append)
    for step, seconds in [(1, 30.0), (2, 36.0), (3, 42.0), (4, 48.0), (5, 54.0)]:
        now[0] = seconds
        bar.update(step, jnp.zeros(()))
    assert lines == []
