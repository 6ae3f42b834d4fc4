"""experiments/runs/hint_report.py: each hint type's score of held-out digits against their
own hints (perfect, or as computed directly) and against other digits' hints (worse), the
depth score with stand-in estimators, and the report's ratio for scores and distances."""

import json

import numpy as np
import pytest

from configs import digits_controlnet, scenes_depth_controlnet
from experiments.runs import controlnet, hint_report
from experiments.runtime import errors
from jaxdiff import hint_scores, hints


def config(**section):
    c = digits_controlnet.get_config()
    c.controlnet.update(section)
    return c


@pytest.mark.parametrize("hint", ["canny", "hough", "segmentation"])
def test_own_hints_score_perfectly_and_other_digits_hints_worse(hint):
    c = config(hint=hint)
    batch = controlnet.heldout_batch(c, 40)
    own = hint_report.score_samples(c, batch["image"], batch["hint"])
    name = hint_report.SCORES[hint][0]
    assert list(own)[0] == name
    for k, scores in own.items():
        if k != "edge_coverage":
            np.testing.assert_array_equal(scores, 1.0, err_msg=k)
    if hint == "hough":  # the hint's segments run straight where the digit's edges curve
        covered = hint_scores.line_scores(hints.canny(batch["image"]), batch["hint"], tol=0)
        np.testing.assert_array_equal(own["edge_coverage"], covered["recall"])
        assert 0.75 < own["edge_coverage"].mean() < 0.95
    other = hint_report.score_samples(c, batch["image"], np.roll(batch["hint"], 1, 0))
    assert 0.1 < other[name].mean() < 0.8


def test_scribble_score_is_the_chamfer_distance_of_the_canny_edges():
    c = config(hint="scribble")
    batch = controlnet.heldout_batch(c, 40)
    own = hint_report.score_samples(c, batch["image"], batch["hint"])
    edges = hints.canny(batch["image"])
    np.testing.assert_array_equal(own["chamfer"],
                                  hint_scores.chamfer_distance(edges, batch["hint"]))
    other = hint_report.score_samples(c, batch["image"], np.roll(batch["hint"], 1, 0))
    # The scribble is the image's edges moved by ~0.75 px (about 0.40 px away on average);
    # another digit's is about 0.67 px away (16x16 digits are dense in edges).
    assert own["chamfer"].mean() < 0.5 and other["chamfer"].mean() > 1.4 * own["chamfer"].mean()


def test_depth_scores_come_from_the_estimator():
    c = scenes_depth_controlnet.get_config()
    images = np.zeros((3, 4, 4, 1), np.float32)
    hint = np.full((3, 4, 4, 1), 0.5, np.float32)
    hint[:, :2] = 0.75  # depth z = 0.25 on the top half, 0.5 below
    exact = hint_report.score_samples(c, images, hint, estimate_depth=lambda x: hint)
    np.testing.assert_array_equal(exact["depth_rmse"], 0.0)
    np.testing.assert_allclose(exact["si_log"], 0.0, atol=1e-15)
    # A flat estimate 0.5: off by 0.25 on half the pixels -> RMSE sqrt(0.25^2 / 2); d = log 2
    # on half the pixels -> si-log = 0.5 log(2)^2 - (0.5 log 2)^2 = 0.25 log(2)^2.
    flat = hint_report.score_samples(c, images, hint,
                                     estimate_depth=lambda x: np.full_like(hint, 0.5))
    np.testing.assert_allclose(flat["depth_rmse"], np.sqrt(0.25**2 / 2))
    np.testing.assert_allclose(flat["si_log"], 0.25 * np.log(2) ** 2)
    with pytest.raises(errors.ConfigError, match="depth estimator"):
        hint_report.score_samples(c, images, hint)


def test_report_ratio_is_better_by_for_scores_and_distances(tmp_path):
    assert hint_report.improvement("canny", 0.8, 0.4) == 2.0
    assert hint_report.improvement("scribble", 1.0, 3.0) == 3.0
    assert hint_report.improvement("depth", 0.05, 0.1) == 2.0
    c = config(hint="scribble")
    batch = controlnet.heldout_batch(c, 8)
    report = hint_report.write_report(
        tmp_path / "r.json", c, images=batch["image"], base_images=np.roll(batch["image"], 1, 0),
        hint_maps=batch["hint"],
    )
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert report["score"] == "chamfer" and not report["higher_is_better"]
    assert report["controlnet"] < report["base"]
    np.testing.assert_allclose(report["ratio"], report["base"] / report["controlnet"])
