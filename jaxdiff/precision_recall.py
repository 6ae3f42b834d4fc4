"""Improved precision and recall of generated samples (Kynkaanniemi et al. 2019, "Improved
Precision and Recall Metric for Assessing Generative Models", sec. 2, eq. 1-2).

Each set of features spans an estimated manifold: the union of the balls centred on its
points whose radius is the distance to that point's k-th nearest neighbour in the same set,

    f(phi, Phi) = 1  if  ||phi - phi'|| <= ||phi' - NN_k(phi')||  for some phi' in Phi  (eq. 1)

Precision is the fraction of generated features inside the real manifold (are the samples
realistic?), recall the fraction of real features inside the generated manifold (does the
model cover the data?) (eq. 2). The paper uses k = 3 and the pool features of an ImageNet
network (``jaxdiff.fid.inception_features``).
"""

from __future__ import annotations

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) squared Euclidean distances between rows of a (N, D) and b (M, D), float64."""
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, *, k: int, batch_size: int = 1024) -> np.ndarray:
    """(N,) squared distance of each point to its k-th nearest neighbour in the same set
    (itself excluded)."""
    features = np.asarray(features, np.float64)
    if not 1 <= k < len(features):
        raise ValueError(f"k = {k} nearest neighbours need more than k points, got "
                         f"{len(features)}")
    radii = []
    for start in range(0, len(features), batch_size):
        d = squared_distances(features[start : start + batch_size], features)
        # The k + 1 smallest include the point itself at distance 0.
        radii.append(np.partition(d, k, axis=1)[:, k])
    return np.concatenate(radii)


def manifold_coverage(
    points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, *, batch_size: int = 1024
) -> float:
    """Fraction of ``points`` inside the union of the balls (``manifold``, squared ``radii``)
    (eq. 1, averaged as in eq. 2)."""
    points = np.asarray(points, np.float64)
    manifold = np.asarray(manifold, np.float64)
    inside = []
    for start in range(0, len(points), batch_size):
        d = squared_distances(points[start : start + batch_size], manifold)
        inside.append((d <= radii[None, :]).any(axis=1))
    return float(np.mean(np.concatenate(inside)))


def precision_recall(
    real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """``(precision, recall)`` of generated features (M, D) against real features (N, D).

    Args:
      real_features, fake_features: feature sets with one D (e.g. Inception pool features).
      k: the neighbour whose distance is each ball's radius (3 in the paper).
      batch_size: rows of the distance matrix held at once.
    """
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs features (N, D) and (M, D), got "
                         f"{real.shape} and {fake.shape}")
    real_radii = knn_radii(real, k=k, batch_size=batch_size)
    fake_radii = knn_radii(fake, k=k, batch_size=batch_size)
    precision = manifold_coverage(fake, real, real_radii, batch_size=batch_size)
    recall = manifold_coverage(real, fake, fake_radii, batch_size=batch_size)
    return precision, recall
