"""jaxdiff.precision_recall on point sets whose answers are worked out by hand."""

import numpy as np
import pytest

from jaxdiff.precision_recall import knn_radii, precision_recall


def test_radii_by_hand():
    # Points 0..4 on a line: the 3rd nearest neighbour of 0 is 3, of 1 is 3 (0, 2 at 1; 3 at
    # 2), of 2 is 0 or 4 (distance 2).
    real = np.arange(5.0)[:, None]
    np.testing.assert_array_equal(knn_radii(real, k=3), np.square([3, 2, 2, 2, 3]))
    np.testing.assert_array_equal(knn_radii(real, k=1), np.ones(5))


def test_precision_recall_by_hand():
    # The real manifold (k=3) is [-3, 3] u [-1, 3] u [0, 4] u [1, 5] u [1, 7] = [-3, 7]: of
    # the fakes, -3 (on the boundary: balls are closed) and 6.9 are inside, 7.5 and 100 not.
    # Every fake ball has radius >= 92.5 (100 is far from the rest), so all reals are covered.
    real = np.arange(5.0)[:, None]
    fake = np.array([-3.0, 6.9, 7.5, 100.0])[:, None]
    assert precision_recall(real, fake, k=3) == (0.5, 1.0)
    # Swapping the roles swaps the two numbers.
    assert precision_recall(fake, real, k=3) == (1.0, 0.5)


def test_two_dimensional_by_hand():
    # Real: the unit square's corners; with k=3 each ball reaches the opposite corner
    # (radius sqrt 2), so the manifold is the union of four discs of radius sqrt 2.
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # (0.5, 0.5): inside; (2, 2): distance sqrt 2 from (1, 1), on the boundary; (2.1, 2): out;
    # (-1.4, 0): 1.4 from (0, 0), inside.
    fake = np.array([[0.5, 0.5], [2.0, 2.0], [2.1, 2.0], [-1.4, 0.0]])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == 0.75
    # Fake balls (k=3): each fake's 3rd neighbour is its farthest one; the ball of (-1.4, 0)
    # has radius |(-1.4, 0) - (2.1, 2)| ~ 4.03 and holds every corner.
    assert recall == 1.0


def test_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)
    # A fake set collapsed onto a few real points: realistic (precision 1), little recall.
    collapsed = np.repeat(x[:2], 25, axis=0) + 1e-9
    precision, recall = precision_recall(x, collapsed)
    assert precision == 1.0 and recall < 0.2


def test_batches_do_not_change_the_answer():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 5)), rng.normal(0.5, 1.2, size=(30, 5))
    assert precision_recall(real, fake, batch_size=7) == precision_recall(real, fake)


def test_bad_input():
    with pytest.raises(ValueError, match="more than k points"):
        precision_recall(np.zeros((3, 2)), np.zeros((5, 2)), k=3)
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
