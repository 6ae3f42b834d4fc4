"""Bad data, a busy workdir and a diverging run: each one line on stderr and exit status 2,
never a traceback and never silent."""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_cli import tiny_config, user_error

from experiments.runs import training_data
from experiments.runtime import errors, train_health, workdir_lock
from jaxdiff import sources
from jaxdiff.sources import tfds_source


def npy_config(tmp_path, images, labels=None, **model):
    np.save(tmp_path / "images.npy", images)
    config = tiny_config()
    config.data.update(source="npy", images_path=str(tmp_path / "images.npy"))
    if labels is not None:
        np.save(tmp_path / "labels.npy", labels)
        config.data.labels_path = str(tmp_path / "labels.npy")
    config.model.update(model)
    return config


def good_images(n=16):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def test_nan_pixels_in_float_images(tmp_path, capsys):
    images = good_images().astype(np.float32) / 255
    images[5, 2, 3] = np.nan  # was cast to 0 silently
    images[9, 0, 0] = np.inf
    err = user_error(capsys, npy_config(tmp_path, images, np.zeros(16, np.int64)), tmp_path / "r")
    assert "images.npy: 2 images with non-finite (NaN/inf) pixel values, the first at index 5" \
        in err


def test_empty_image_array(tmp_path, capsys):
    err = user_error(capsys, npy_config(tmp_path, np.zeros((0, 8, 8), np.uint8)), tmp_path / "r")
    assert "images.npy holds no images (shape (0, 8, 8, 1))" in err  # was an IndexError


@pytest.mark.parametrize(
    "bad, expected",
    [
        # 10 with 10 classes trained as the null (CFG) label; -1 too, silently.
        ({3: 10, 7: 10}, "2 labels outside [0, 10) (model.num_classes=10; 10 is the null label"),
        ({4: -1}, "1 labels outside [0, 2**31) (class labels start at 0), the first at index 4"),
        # 11 and -100 made every step non-finite and skipped, silently.
        ({2: 11, 6: 11, 8: 11}, "3 labels outside [0, 10)"),
        # int64 past int32 wrapped around on the cast.
        ({1: 2**32 + 3}, "1 labels outside [0, 2**31)"),
    ],
)
def test_labels_outside_the_classes(tmp_path, capsys, bad, expected):
    labels = np.arange(16, dtype=np.int64) % 10
    for index, value in bad.items():
        labels[index] = value
    err = user_error(capsys, npy_config(tmp_path, good_images(), labels), tmp_path / "r")
    assert expected in err and "labels.npy" in err
    assert f"the first at index {min(bad)}" in err


def test_non_integer_labels(tmp_path, capsys):
    labels = (np.arange(16) % 10).astype(np.float32)
    labels[6] = 2.5  # was truncated to 2 silently
    err = user_error(capsys, npy_config(tmp_path, good_images(), labels), tmp_path / "r")
    assert "labels.npy: 1 labels that are not integers, the first at index 6 (value" in err


def test_integral_float_labels_and_valid_data_pass(tmp_path):
    source = sources.load_npy(*_save(tmp_path, good_images(), (np.arange(16) % 10).astype(float)))
    sources.check_labels(source, num_classes=10)
    assert source.labels.dtype == np.int32 and source[3]["label"] == 3


def _save(tmp_path, images, labels):
    np.save(tmp_path / "i.npy", images)
    np.save(tmp_path / "l.npy", labels)
    return tmp_path / "i.npy", tmp_path / "l.npy"


def test_second_run_in_a_busy_workdir_is_refused(tmp_path, capsys):
    with workdir_lock.hold(tmp_path / "r"):
        err = user_error(capsys, tiny_config(), tmp_path / "r")
    assert f"is in use by another training run (PID {os.getpid()} on host" in err
    assert "use another --workdir" in err


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    # A run killed by SIGKILL: its lock file still names it, but the kernel dropped its lock.
    code = ("import sys, os; sys.path.insert(0, os.getcwd()); "
            "from experiments.runtime import workdir_lock; "
            f"held = workdir_lock.hold({str(tmp_path)!r}); held.__enter__(); os._exit(0)")
    dead = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), check=True)
    assert dead.returncode == 0
    held_by = (tmp_path / workdir_lock.LOCK_FILE).read_text()
    assert '"pid"' in held_by
    with workdir_lock.hold(tmp_path):
        pass
    err = capsys.readouterr().err
    assert "note: took over the lock of" in err and "which is no longer running" in err
    assert (tmp_path / workdir_lock.LOCK_FILE).read_text() == ""  # released cleanly


def test_health_check_warns_then_stops():
    health = train_health.HealthCheck(learning_rate=1e4, min_skipped_in_a_row=10, verbose=True)
    health.check({"step": 10, "skipped": 0.0, "loss": 0.5}, steps=10)
    assert not health.warned
    health.check({"step": 20, "skipped": 9.0, "loss": float("nan")}, steps=10)
    assert health.warned
    with pytest.raises(train_health.TrainingDivergedError, match="learning_rate \\(now 10000\\)"):
        health.check({"step": 30, "skipped": 10.0, "loss": float("nan")}, steps=10)


@pytest.mark.slow
def test_learning_rate_1e4_stops_with_a_message(tmp_path, capsys):
    config = tiny_config()
    # was: 29 of 30 steps skipped, exit code 0, no warning
    config.train.update(learning_rate=1e4, steps=30, log_every=5, checkpoint_every=100)
    err_line = user_error(capsys, config, tmp_path / "r")
    assert "training stopped at step" in err_line
    assert "steps were skipped because their loss or gradient was not finite" in err_line
    assert "lower train.learning_rate (now 10000)" in err_line


@pytest.mark.parametrize("config_name", ["mnist", "fashion_mnist"])
def test_offline_tfds_configs_name_the_alternatives(tmp_path, capsys, monkeypatch, config_name):
    # tensorflow-datasets 4.9.10 raises KeyError for a dataset never prepared: it was a
    # 56-line traceback.
    import importlib

    monkeypatch.setattr(tfds_source, "_reachable", lambda host, **kw: False)
    monkeypatch.setattr("urllib.request.getproxies", lambda: {})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    config = importlib.import_module(f"configs.{config_name}").get_config()
    config.data.batch_size = 8
    with pytest.raises(SystemExit) as info, errors.exit_on_user_error():
        training_data.build_data(config)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "could not be downloaded" in err and "--config.data.source=idx" in err


def test_library_value_errors_keep_their_traceback_and_own_ones_are_one_line(capsys):
    """A ValueError raised by jaxdiff's own code is the user's mistake (one line, exit 2);
    one raised inside a library (here numpy, as a bug would) keeps its traceback."""
    import numpy as np

    from experiments.runtime import errors
    from jaxdiff.samplers import grids

    with pytest.raises(SystemExit) as info, errors.exit_on_user_error():
        grids.timestep_grid(10, 20)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: num_steps must be between 1")
    with pytest.raises(ValueError, match="cannot reshape"), errors.exit_on_user_error():
        np.zeros(3).reshape(2, 2)
    with pytest.raises(SystemExit), errors.exit_on_user_error():
        open("/nonexistent/file")
    assert "No such file" in capsys.readouterr().err


def sprites_cli(tmp_path, images, labels):
    """``python -m experiments.train --config configs/sprites.py`` on .npy files, as a new
    user runs it: (exit status, whole stderr, whether the workdir was created)."""
    np.save(tmp_path / "images.npy", images)
    labels_path = tmp_path / "labels.npy"
    if labels is not None:
        np.save(labels_path, labels)
    workdir = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=configs/sprites.py",
         f"--workdir={workdir}", f"--config.data.images_path={tmp_path / 'images.npy'}",
         f"--config.data.labels_path={labels_path}", "--config.train.steps=2"],
        cwd=root, capture_output=True, text=True, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    return proc.returncode, proc.stderr, workdir.exists()


def sprite_images(n=16):
    return np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


BAD_SPRITES = {
    "no labels file": (sprite_images(), None, "labels.npy"),
    "inf pixels": (np.where(np.arange(16)[:, None, None, None] == 3, np.inf,
                            sprite_images() / 255.0).astype(np.float32),
                   np.zeros((16, 5), np.float32), "non-finite"),
    "labels -100": (sprite_images(), np.full(16, -100), "labels outside"),
    "float labels": (sprite_images(), np.arange(16) + 0.5, "not integers"),
    "empty arrays": (np.zeros((0, 16, 16, 3), np.uint8), np.zeros((0, 5), np.float32),
                     "no images"),
}


@pytest.mark.parametrize("case", [
    pytest.param(name, marks=[] if name == "no labels file" else pytest.mark.slow)
    for name in BAD_SPRITES
])
def test_a_bad_data_run_prints_one_line_and_leaves_no_workdir(tmp_path, case):
    """The whole stderr is the one error line: the data are checked before the workdir, a
    checkpoint manager or its threads exist."""
    images, labels, expected = BAD_SPRITES[case]
    status, stderr, made = sprites_cli(tmp_path, images, labels)
    assert status == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
    assert not made
