"""jaxdiff.hint_scores on hand-made maps (values worked out by hand in the comments) and
against brute-force oracles (every pair of pixels) on random maps."""

import numpy as np
import pytest

from jaxdiff import hint_scores, hints


def line_map(size=16, row=5, cols=range(2, 10)):
    m = np.zeros((1, size, size, 1), np.float32)
    for c in cols:
        m[0, row, c] = 1.0
    return m


def brute_directed(a, b):
    """For each True pixel of a, the distance to the nearest True pixel of b."""
    pa, pb = np.argwhere(a), np.argwhere(b)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_line_scores_by_hand():
    hint = line_map()  # 8 pixels on row 5, columns 2..9
    same = hint_scores.line_scores(hint, hint, tol=1)
    assert {k: float(v[0]) for k, v in same.items()} == {"precision": 1, "recall": 1, "f1": 1}
    down1 = line_map(row=6)
    assert hint_scores.line_scores(down1, hint, tol=1)["f1"][0] == 1.0  # within 1 px
    assert hint_scores.line_scores(down1, hint, tol=0)["f1"][0] == 0.0  # no pixel in common
    assert hint_scores.line_scores(line_map(row=7), hint, tol=1)["f1"][0] == 0.0
    # Half the line (columns 2..5): every predicted pixel is on the hint (precision 1); hint
    # pixels within 1 px of it are columns 2..6, 5 of 8 (recall 0.625); F1 = 1.25 / 1.625.
    half = hint_scores.line_scores(line_map(cols=range(2, 6)), hint, tol=1)
    assert half["precision"][0] == 1.0 and half["recall"][0] == 0.625
    np.testing.assert_allclose(half["f1"][0], 2 * 0.625 / 1.625)
    # A diagonal neighbour is sqrt(2) away: inside tol 1.5, outside tol 1.
    diag = line_map(row=6, cols=range(3, 11))
    assert hint_scores.line_scores(diag, hint, tol=1)["precision"][0] == 7 / 8
    assert hint_scores.line_scores(diag, hint, tol=1.5)["f1"][0] == 1.0
    empty = np.zeros_like(hint)
    assert hint_scores.line_scores(empty, hint)["f1"][0] == 0.0
    assert hint_scores.line_scores(hint, empty)["recall"][0] == 0.0
    both = hint_scores.line_scores(empty, empty)
    assert both["precision"][0] == both["recall"][0] == both["f1"][0] == 1.0


def test_line_scores_match_brute_force_and_exact_f1():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 12, 12, 1)) < 0.1
    target = rng.random((6, 12, 12, 1)) < 0.1
    for tol in (1.0, 2.0):
        got = hint_scores.line_scores(pred, target, tol=tol)
        for k in range(6):
            p, t = pred[k, ..., 0], target[k, ..., 0]
            assert got["precision"][k] == np.mean(brute_directed(p, t) <= tol)
            assert got["recall"][k] == np.mean(brute_directed(t, p) <= tol)
    np.testing.assert_allclose(
        hint_scores.line_scores(pred, target, tol=0)["f1"], hints.edge_f1(pred, target)
    )


def test_chamfer_by_hand():
    hint = line_map()
    assert hint_scores.chamfer_distance(hint, hint)[0] == 0.0
    assert hint_scores.chamfer_distance(line_map(row=7), hint)[0] == 2.0  # every pixel 2 away
    # One pixel at the line's left end: pixels of the line are 0..7 from it (mean 3.5), it
    # is 0 from the line: (3.5 + 0) / 2.
    dot = line_map(cols=[2])
    assert hint_scores.chamfer_distance(dot, hint)[0] == 1.75
    assert hint_scores.chamfer_distance(hint, dot)[0] == 1.75  # symmetric
    empty = np.zeros_like(hint)
    np.testing.assert_allclose(hint_scores.chamfer_distance(empty, hint), [np.hypot(16, 16)])
    assert hint_scores.chamfer_distance(empty, hint, empty_distance=5.0)[0] == 5.0
    assert hint_scores.chamfer_distance(empty, empty)[0] == 0.0


def test_chamfer_matches_brute_force():
    rng = np.random.default_rng(1)
    pred = rng.random((5, 10, 14)) < 0.15
    target = rng.random((5, 10, 14)) < 0.05
    got = hint_scores.chamfer_distance(pred, target)
    for k in range(5):
        want = 0.5 * (brute_directed(pred[k], target[k]).mean()
                      + brute_directed(target[k], pred[k]).mean())
        np.testing.assert_allclose(got[k], want, rtol=1e-12)


def test_mean_iou_by_hand():
    target = np.zeros((1, 4, 4), np.int64)
    target[0, :, :2] = 1  # left half region 1, right half region 0
    assert hint_scores.mean_iou(target, target)[0] == 1.0
    # All region 1: IoU(1) = 8 / 16, IoU(0) = 0 / 8 -> mean 0.25; without region 0: 0.5.
    ones = np.ones_like(target)
    assert hint_scores.mean_iou(ones, target)[0] == 0.25
    assert hint_scores.mean_iou(ones, target, ignore=(0,))[0] == 0.5
    # Shifted one column right: region 1 is columns 1..2: IoU(1) = 4 / 12, IoU(0) = 4 / 12.
    shifted = np.roll(target, 1, axis=2)
    np.testing.assert_allclose(hint_scores.mean_iou(shifted, target), [1 / 3])
    # Three regions from segmentation hint values k / 2.
    seg = np.array([[[0.0, 0.5], [1.0, 1.0]]])
    np.testing.assert_array_equal(hint_scores.regions(seg, num_regions=3), [[[0, 1], [2, 2]]])


def test_depth_errors_by_hand():
    target = np.full((2, 4, 4, 1), 0.5)
    np.testing.assert_allclose(hint_scores.depth_rmse(target + 0.1, target), [0.1, 0.1])
    # pred = 2 target: d_i = log 2 everywhere; D = (1 - lam) log(2)^2.
    for lam in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(
            hint_scores.scale_invariant_log_error(2 * target, target, lam=lam),
            [(1 - lam) * np.log(2) ** 2] * 2, atol=1e-15,
        )
    # d = 1 on half the pixels, 0 on the others: mean d^2 = 0.5, (mean d)^2 = 0.25.
    pred = np.ones((1, 2, 2))
    pred[0, 0] = np.e
    np.testing.assert_allclose(hint_scores.scale_invariant_log_error(pred, np.ones((1, 2, 2))),
                               [0.25])
    np.testing.assert_allclose(hint_scores.hint_to_depth([0.0, 0.25, 1.0]), [1.0, 0.75, 0.01])
    with pytest.raises(ValueError, match="positive depths"):
        hint_scores.scale_invariant_log_error(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))


def test_edge_f1_and_shape_errors():
    hint = line_map()
    assert hint_scores.edge_f1(hint, hint)[0] == 1.0
    # 4 of 8 pixels predicted: TP 4, FN 4 -> F1 = 8 / 12.
    np.testing.assert_allclose(hint_scores.edge_f1(line_map(cols=range(2, 6)), hint), [2 / 3])
    with pytest.raises(ValueError, match="different shapes"):
        hint_scores.chamfer_distance(hint, hint[:, :8])
    with pytest.raises(ValueError, match="one channel"):
        hint_scores.edge_f1(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4, 3)))
