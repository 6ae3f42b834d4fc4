"""Tests for the image-folder source (jaxdiff.sources.load_folder) and its grain pipeline."""

import json

import cv2
import ml_collections
import numpy as np
import pytest

from jaxdiff import data, sources


def _write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def folder(tmp_path):
    """cats/ (2 PNGs, one nested deeper), dogs/ (1 JPEG), a broken PNG and a text file."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)  # centre square: columns 2..5
    _write(tmp_path / "cats" / "a.png", wide)
    _write(tmp_path / "cats" / "deep" / "b.png", np.full((4, 4, 3), (10, 20, 30), np.uint8))
    _write(tmp_path / "dogs" / "c.jpg", np.full((8, 8, 3), 200, np.uint8))
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, wide


def test_recursive_crop_rgb_labels_and_one_warning(folder):
    root, wide = folder
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .*broken\.png"):
        src = sources.load_folder(root, image_size=4, channels=3, class_folders=True)
    assert len(src) == 3 and src.classes == ("cats", "dogs")
    assert [r["label"] for r in (src[0], src[1], src[2])] == [0, 0, 1]
    np.testing.assert_array_equal(src[0]["image"], wide[:, 2:6])  # centre crop, RGB order
    np.testing.assert_array_equal(src[1]["image"], np.full((4, 4, 3), (10, 20, 30)))
    jpeg = src[2]["image"]  # 8x8 -> 4x4 by INTER_AREA, JPEG within a few levels
    assert jpeg.shape == (4, 4, 3) and np.abs(jpeg.astype(int) - 200).max() <= 3


def test_grey_and_no_labels(folder):
    root, wide = folder
    with pytest.warns(UserWarning):
        src = sources.load_folder(root, image_size=2, channels=1)
    record = src[0]
    assert "label" not in record and record["image"].shape == (2, 2, 1)
    grey = cv2.cvtColor(wide[:, 2:6], cv2.COLOR_RGB2GRAY)
    want = cv2.resize(grey, (2, 2), interpolation=cv2.INTER_AREA)
    assert np.abs(record["image"][..., 0].astype(int) - want).max() <= 1


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable PNG/JPEG images under"):
        sources.load_folder(tmp_path / "empty", image_size=8)
    with pytest.raises(FileNotFoundError, match="data.path"):
        sources.load_folder(tmp_path / "nope", image_size=8)
    _write(tmp_path / "loose" / "x.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="class sub-folder"):
        sources.load_folder(tmp_path / "loose", image_size=2, class_folders=True)


def test_pipeline_over_a_folder_resumes(folder):
    root, _ = folder
    config = ml_collections.ConfigDict(dict(
        source="folder", path=str(root), image_size=4, channels=3, class_folders=True
    ))
    with pytest.warns(UserWarning):
        src = sources.make_source(config)

    def pipeline():
        return data.make_pipeline(src, batch_size=2, seed=3, image_size=4, prefetch=0)

    iterator = pipeline()
    first = next(iterator)
    assert first["image"].shape == (2, 4, 4, 3) and first["image"].dtype == np.float32
    assert first["image"].min() >= -1 and first["image"].max() <= 1
    state = json.loads(json.dumps(iterator.get_state()))
    want = [next(iterator) for _ in range(3)]
    resumed = pipeline()
    resumed.set_state(state)
    for batch in want:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], batch["image"])
        np.testing.assert_array_equal(got["label"], batch["label"])
