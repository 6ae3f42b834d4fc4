"""How well a sample follows its ControlNet hint: one score per hint type, computed from
maps made of the samples (their Canny edges, Hough lines, regions or estimated depth) and
the hint maps they were given.

Every function takes batches of maps (N, H, W) or (N, H, W, 1) and returns one value per
image, shape (N,), as float64 numpy; they are pure (no state, no randomness).

* ``edge_f1``: F1 at exact pixels of two binary maps (Canny hints).
* ``line_scores``: precision, recall and F1 of two line maps with a pixel tolerance
  ``tol``: a predicted pixel is correct when a hint pixel lies within Euclidean distance
  ``tol`` of it, a hint pixel is covered when a predicted pixel lies within ``tol`` of it
  (the tolerant matching of edge benchmarks, e.g. BSDS; ``recall`` is the fraction of the
  hint's line pixels covered). Hough hints.
* ``chamfer_distance``: the symmetric chamfer distance (Barrow et al. 1977) of two binary
  maps, the mean over both directions of the mean distance from each "on" pixel of one map
  to the nearest "on" pixel of the other, in pixels (``scipy.ndimage.distance_transform_edt``).
  Scribble hints.
* ``mean_iou``: mean intersection over union of the regions of two label maps (the regions
  present in either map count). Segmentation hints.
* ``depth_rmse`` and ``scale_invariant_log_error``: RMSE of two depth maps, and Eigen,
  Puhrsch & Fergus 2014 ("Depth Map Prediction from a Single Image using a Multi-Scale Deep
  Network") eq. 4, D = 1/n sum d_i^2 - lambda / n^2 (sum d_i)^2 with d_i = log y_i - log
  y*_i; lambda = 1 is their scale-invariant error (eq. 1-3), lambda = 0 the squared log
  error. Depth hints, after ``hint_to_depth``.

Empty maps: two empty maps agree perfectly (F1 1, chamfer 0, IoU 1); an empty map against
a non-empty one has F1 0 and chamfer distance ``empty_distance`` (default: the image
diagonal, the largest distance two pixels of the image can have).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

# Depth maps are clipped to at least this before the log (the scenes' nearest surface is
# at depth 0.05, their back wall at 1).
MIN_DEPTH = 1e-2


def _maps(x: Any, *, threshold: float | None = 0.5) -> np.ndarray:
    """(N, H, W[, 1]) -> (N, H, W): bool when ``threshold`` is given, float64 otherwise."""
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[-1] != 1:
            raise ValueError(f"score maps must have one channel, got shape {x.shape}")
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"score maps must be (N, H, W) or (N, H, W, 1), got shape {x.shape}")
    return x > threshold if threshold is not None else x.astype(np.float64)


def _pair(pred: Any, target: Any, **kw) -> tuple[np.ndarray, np.ndarray]:
    p, t = _maps(pred, **kw), _maps(target, **kw)
    if p.shape != t.shape:
        raise ValueError(f"maps of different shapes: {p.shape} vs {t.shape}")
    return p, t


def edge_f1(pred: Any, target: Any, *, threshold: float = 0.5) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) of the maps binarised at ``threshold``, at exact pixels;
    (N,). Two empty maps score 1."""
    p, t = _pair(pred, target, threshold=threshold)
    tp = np.sum(p & t, axis=(1, 2))
    wrong = np.sum(p ^ t, axis=(1, 2))
    denominator = 2 * tp + wrong
    return np.where(denominator == 0, 1.0, 2 * tp / np.maximum(denominator, 1))


def distance_to(maps: np.ndarray) -> np.ndarray:
    """For bool maps (N, H, W): the Euclidean distance of every pixel to the nearest True
    pixel of its map (0 on them); ``inf`` everywhere in an empty map."""
    out = np.full(maps.shape, np.inf)
    for k, m in enumerate(maps):
        if m.any():
            out[k] = ndimage.distance_transform_edt(~m)
    return out


def line_scores(pred: Any, target: Any, *, tol: float = 1.0,
                threshold: float = 0.5) -> dict[str, np.ndarray]:
    """{'precision', 'recall', 'f1'}, each (N,), of binary line maps with a pixel tolerance:
    precision = |{p in pred: dist(p, target) <= tol}| / |pred|, recall = |{t in target:
    dist(t, pred) <= tol}| / |target| (the fraction of hint pixels covered), F1 their
    harmonic mean. An empty map has precision (or recall) 1 if the other is empty too,
    else 0. ``tol`` = 0 is exact pixels (then F1 equals ``edge_f1``)."""
    p, t = _pair(pred, target, threshold=threshold)
    near_t, near_p = distance_to(t) <= tol, distance_to(p) <= tol
    n_p, n_t = p.sum(axis=(1, 2)), t.sum(axis=(1, 2))
    both_empty = (n_p == 0) & (n_t == 0)
    precision = np.where(n_p > 0, (p & near_t).sum(axis=(1, 2)) / np.maximum(n_p, 1),
                         both_empty * 1.0)
    recall = np.where(n_t > 0, (t & near_p).sum(axis=(1, 2)) / np.maximum(n_t, 1),
                      both_empty * 1.0)
    total = precision + recall
    f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def chamfer_distance(pred: Any, target: Any, *, threshold: float = 0.5,
                     empty_distance: float | None = None) -> np.ndarray:
    """Symmetric chamfer distance in pixels, (N,): (mean_{p in pred} dist(p, target) +
    mean_{t in target} dist(t, pred)) / 2. 0 for identical maps and for two empty maps;
    ``empty_distance`` (default the image diagonal sqrt(H^2 + W^2)) when exactly one map is
    empty."""
    p, t = _pair(pred, target, threshold=threshold)
    if empty_distance is None:
        empty_distance = float(np.hypot(*p.shape[1:]))
    d_t, d_p = distance_to(t), distance_to(p)
    n_p, n_t = p.sum(axis=(1, 2)), t.sum(axis=(1, 2))
    out = np.zeros(len(p))
    for k in range(len(p)):
        if n_p[k] and n_t[k]:
            out[k] = 0.5 * (d_t[k][p[k]].mean() + d_p[k][t[k]].mean())
        elif n_p[k] or n_t[k]:
            out[k] = empty_distance
    return out


def regions(maps: Any, *, num_regions: int) -> np.ndarray:
    """Segmentation maps with values k / (num_regions - 1) -> int labels k, (N, H, W)."""
    return np.rint(_maps(maps, threshold=None) * (num_regions - 1)).astype(np.int64)


def mean_iou(pred_labels: Any, target_labels: Any, *,
             ignore: tuple[int, ...] = ()) -> np.ndarray:
    """Mean over the labels present in either map (minus ``ignore``) of |P_k & T_k| /
    |P_k | T_k|, per image (N,), for int label maps (N, H, W[, 1]) (``regions`` makes them
    from segmentation hints). An image where no label is present scores 1."""
    p, t = _pair(pred_labels, target_labels, threshold=None)
    out = np.ones(len(p))
    for k in range(len(p)):
        labels = sorted((set(np.unique(p[k])) | set(np.unique(t[k]))) - set(ignore))
        if labels:
            out[k] = np.mean([
                np.sum((p[k] == v) & (t[k] == v)) / np.sum((p[k] == v) | (t[k] == v))
                for v in labels
            ])
    return out


def hint_to_depth(hint: Any) -> np.ndarray:
    """A depth hint (bright = near, ControlNet's convention; ``jaxdiff.scenes``: 1 - z) ->
    depth z = 1 - hint, clipped to [MIN_DEPTH, 1] so that its log is finite."""
    return np.clip(1.0 - np.asarray(hint, np.float64), MIN_DEPTH, 1.0)


def depth_rmse(pred: Any, target: Any) -> np.ndarray:
    """Per-image root mean squared difference of two depth (or depth hint) maps, (N,)."""
    p, t = _pair(pred, target, threshold=None)
    return np.sqrt(np.mean((p - t) ** 2, axis=(1, 2)))


def scale_invariant_log_error(pred: Any, target: Any, *, lam: float = 1.0) -> np.ndarray:
    """Eigen et al. 2014 eq. 4 per image, (N,): 1/n sum_i d_i^2 - lam / n^2 (sum_i d_i)^2,
    d_i = log pred_i - log target_i, for positive depths (``hint_to_depth``). lam = 1: the
    scale-invariant error (eq. 3), 0 for any pred = c * target, c > 0; lam = 0: the mean
    squared log error. The paper trains with lam = 0.5."""
    p, t = _pair(pred, target, threshold=None)
    if (p <= 0).any() or (t <= 0).any():
        raise ValueError("the scale-invariant log error needs positive depths (hint_to_depth)")
    d = (np.log(p) - np.log(t)).reshape(len(p), -1)
    n = d.shape[1]
    return np.mean(d**2, axis=1) - lam * np.sum(d, axis=1) ** 2 / n**2
