"""End-to-end ControlNet: a tiny digits base, a ControlNet trained over it with on-device
JAX Canny hints, sampling from held-out hints and from a hint image, and the one-line
errors for a bad base, a bad hint image and a hint type the run was not trained on."""

import json

import cv2
import jax
import numpy as np
import pytest
from PIL import Image
from test_cli import tiny_config

from configs.digits_controlnet import controlnet_section
from experiments.runs import controlnet, hint_report, kinds, restore, sampling, train_loop
from experiments.runtime import errors
from jaxdiff import hints

# Three trainings and five samplers compiled: end to end, so marked slow (still run in CI).
pytestmark = pytest.mark.slow


def controlnet_config(base_workdir, **overrides):
    config = tiny_config()
    config.controlnet = controlnet_section(
        base_workdir=str(base_workdir), hint_channels=(4,), heldout=12, **overrides
    )
    config.train.update(steps=2, checkpoint_every=2)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    config = tiny_config()
    config.train.update(steps=2, checkpoint_every=2)
    train_loop.train_and_evaluate(config, str(base))
    controlled = tmp_path_factory.mktemp("canny")
    train_loop.train_and_evaluate(controlnet_config(base, hint_device="device"), str(controlled))
    return base, controlled


def test_train_keeps_the_base_and_sample_writes_hints(runs, tmp_path):
    base, controlled = runs
    config = restore.load_run_config(controlled)
    _, base_ema, _ = restore.restore_for_sampling(
        restore.load_run_config(base), base, kinds.build_model(config)
    )
    model = controlnet.build_model(config, controlled, for_training=False)
    for a, b in zip(jax.tree.leaves(base_ema), jax.tree.leaves(model.base_params), strict=True):
        np.testing.assert_array_equal(a, b)

    result = sampling.sample(str(controlled), hints_from_data=4, steps=3, out=str(tmp_path / "a"))
    saved = np.load(tmp_path / "a" / "samples.npz")
    heldout = controlnet.heldout_batch(config, 4)
    assert saved["images"].shape == (4, 8, 8, 1) and saved["images"].dtype == np.uint8
    assert saved["hints"].dtype == np.float32 and saved["hints"].shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(saved["hints"], hints.canny(heldout["image"]))
    np.testing.assert_array_equal(saved["labels"], heldout["label"])
    report = json.loads((tmp_path / "a" / "hint_report.json").read_text())
    assert report == result["report"] and report["score"] == "edge_f1"
    assert 0 <= report["base"] <= 1 and 0 <= report["controlnet"] <= 1
    assert report["num_images"] == 4 and report["higher_is_better"]
    # Scored again from the saved uint8 samples: the same report (hints come from uint8).
    assert hint_report.rescore(tmp_path / "a", config) == report

    # A hint image of another size: made grey, resized to 8x8, binarised (edge hints).
    picture = np.zeros((40, 40, 3), np.uint8)
    picture[10:30, 18:22] = 255
    cv2.imwrite(str(tmp_path / "hint.png"), picture)
    sampling.sample(str(controlled), hint_image=str(tmp_path / "hint.png"), labels="1,7",
                  num=2, steps=3, out=str(tmp_path / "b"))
    saved = np.load(tmp_path / "b" / "samples.npz")
    want = (cv2.resize(picture[..., 0] / 255.0, (8, 8), interpolation=cv2.INTER_AREA) > 0.5)
    np.testing.assert_array_equal(saved["hints"][..., 0], np.repeat(want[None], 4, axis=0))
    np.testing.assert_array_equal(saved["labels"], [1, 1, 7, 7])
    # Two rows of hints, each above its two samples: 4 rows of 8x8 images shown 6x larger.
    assert Image.open(tmp_path / "b" / "grid.png").size == (2 * 50 + 2, 4 * 50 + 2)


def one_line_error(capsys, run) -> str:
    with pytest.raises(SystemExit) as info, errors.exit_on_user_error():
        run()
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_bases_hint_images_and_hint_types_are_one_line_errors(runs, tmp_path, capsys):
    base, controlled = runs
    missing = controlnet_config(tmp_path / "nowhere")
    err = one_line_error(
        capsys, lambda: train_loop.train_and_evaluate(missing, str(tmp_path / "a"))
    )
    assert "is missing or unreadable" in err
    other = controlnet_config(base)
    other.model.block_out_channels = (8, 8)
    err = one_line_error(capsys, lambda: train_loop.train_and_evaluate(other, str(tmp_path / "b")))
    assert "does not match this config's architecture" in err and "block_out_channels" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    err = one_line_error(capsys, lambda: sampling.sample(
        str(controlled), hint_image=str(tmp_path / "bad.png"), out=str(tmp_path / "c")))
    assert "cannot read the hint image" in err
    err = one_line_error(capsys, lambda: sampling.sample(
        str(controlled), hint_image=str(tmp_path / "bad.png"), hint_type="depth"))
    assert "trained on 'canny' hints, not 'depth'" in err
    err = one_line_error(capsys, lambda: sampling.sample(str(controlled)))
    assert "--hint_image PATH or --hints_from_data N" in err


def test_hint_report_on_two_processes(runs, tmp_path):
    """Two processes (2 simulated devices each) sample held-out hints and the base model
    together; process 0 writes the report, and the samples equal one process's."""
    import sys

    from test_multihost import run_two_processes

    _, controlled = runs
    one = sampling.sample(str(controlled), hints_from_data=4, steps=3, out=str(tmp_path / "one"))
    run_two_processes([sys.executable, "-m", "experiments.sample", f"--workdir={controlled}",
                       "--hints_from_data=4", "--steps=3", f"--out={tmp_path / 'two'}"])
    report = json.loads((tmp_path / "two" / "hint_report.json").read_text())
    assert report["num_images"] == 4 and set(report) == set(one["report"])
    two = np.load(tmp_path / "two" / "samples.npz")["images"].astype(int)
    assert np.abs(two - one["images"].astype(int)).max() <= 2
