"""experiments/controlnet.py without training: hint data, hint images and the
hints-above-samples grid (numbers, not shapes only); the scores: test_hint_report.py."""

import cv2
import numpy as np
import pytest

from configs import digits_controlnet
from experiments.runs import controlnet, validation
from experiments.runtime import errors
from jaxdiff import hints


def config(**controlnet):
    c = digits_controlnet.get_config()
    c.controlnet.update(controlnet)
    return c


def test_heldout_records_carry_their_hints_and_are_not_trained_on():
    c = config(hint="segmentation", heldout=10)
    batch = controlnet.heldout_batch(c, 6)
    assert batch["image"].shape == (6, 16, 16, 1) and batch["hint"].shape == (6, 16, 16, 1)
    np.testing.assert_array_equal(batch["hint"], hints.segmentation(batch["image"]))
    source, train, heldout = controlnet.heldout_split(c)
    assert len(train) == len(source) - 10 and set(train).isdisjoint(heldout)
    np.testing.assert_array_equal(batch["label"], source.labels[-10:-4])
    with pytest.raises(errors.ConfigError, match="holds out 10"):
        controlnet.heldout_batch(c, 11)


def test_hint_images_are_resized_binarised_or_computed(tmp_path):
    c = config()
    depth16 = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "map.png"), depth16)
    hint, note = controlnet.read_hint_image(c, str(tmp_path / "map.png"), compute=False)
    want = cv2.resize(depth16 / 65535.0, (16, 16), interpolation=cv2.INTER_AREA) > 0.5
    np.testing.assert_array_equal(hint[0, ..., 0], want)
    assert "64x48" in note and "binarised" in note
    digit = np.zeros((12, 12), np.float32)
    digit[2:10, 5:7] = 1.0
    np.save(tmp_path / "digit.npy", digit)
    hint, note = controlnet.read_hint_image(c, str(tmp_path / "digit.npy"), compute=True)
    padded = np.pad(np.round(digit * 255).astype(np.uint8), 2)[None, ..., None]
    np.testing.assert_array_equal(hint, hints.canny(padded))
    assert "canny hint computed" in note


def test_hints_above_interleaves_rows():
    images = np.full((5, 2, 2, 1), 0.5, np.float32)
    maps = np.zeros((5, 2, 2, 1), np.float32)
    maps[:, 0, 0] = 1.0
    grid = controlnet.hints_above(images, maps, ncol=3)
    assert grid.shape == (12, 2, 2, 1)  # hints row, samples row, hints row (+1 blank), ...
    np.testing.assert_array_equal(grid[:3, 0, 0, 0], 1.0)  # hint 1 -> +1
    np.testing.assert_array_equal(grid[:3, 1, 1, 0], -1.0)  # hint 0 -> -1
    np.testing.assert_array_equal(grid[3:6], images[:3])
    np.testing.assert_array_equal(grid[9:11], images[3:])
    np.testing.assert_array_equal(grid[11], -1.0)  # the blank that fills the last row


def test_config_errors():
    with pytest.raises(errors.ConfigError, match="hint_device='device' makes Canny"):
        controlnet.validate(config(hint="hough", hint_device="device"))
    with pytest.raises(errors.ConfigError, match="depth hints come with the data"):
        controlnet.validate(config(hint="depth"))
    with pytest.raises(errors.ConfigError, match="must be one of"):
        controlnet.validate(config(hint="edges"))


@pytest.mark.parametrize(
    "name, base",
    [("digits_controlnet", "digits"), ("mnist_controlnet", "mnist_idx"),
     ("scenes_depth_controlnet", "scenes")],
)
def test_controlnet_configs_validate_and_keep_their_bases_model(name, base):
    import importlib

    c = importlib.import_module(f"configs.{name}").get_config()
    validation.validate_config(c, num_devices=1)
    controlnet.validate(c)
    base_config = importlib.import_module(f"configs.{base}").get_config()
    validation.validate_config(base_config, num_devices=1)
    assert c.model.to_dict() == base_config.model.to_dict()
    assert c.diffusion.to_dict() == base_config.diffusion.to_dict()
    assert c.data.to_dict() == base_config.data.to_dict()
