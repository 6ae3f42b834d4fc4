"""How closely a ControlNet's samples follow their hints, next to the base model's samples
from the same seed and labels: ``hint_report.json`` of ``experiments.sample
--hints_from_data N``. One score per hint type (``SCORES``), from ``jaxdiff.hint_scores``:

* canny: F1 at exact pixels of the samples' Canny edges against the hint;
* hough: F1 with a ``LINE_TOL``-pixel tolerance (0: exact pixels) of the samples' Hough
  line maps against the hint's; also, with a 1-pixel tolerance, the F1 and the fraction of
  the hint's line pixels covered (``line_coverage_tol1``). On 16x16 digits a 1-pixel
  tolerance spans a whole stroke: real digits of the same label already reach 0.68 there
  (docs/controlnet.md), so the headline score is exact. ``edge_coverage``: the fraction of
  the hint's line pixels on the samples' Canny edges;
* scribble: symmetric chamfer distance (pixels) between the samples' Canny edges and the
  scribble (lower is better);
* segmentation: mean IoU of the regions of the samples' segmentation and of the hint;
* depth: RMSE between a depth estimate of the samples and the depth hint, and the
  scale-invariant log error of Eigen et al. 2014 (eq. 4, lambda = 1) of their depths
  (lower is better). The estimate comes from a depth-estimator run
  (experiments/runs/depth_estimator.py) or any ``images -> hints`` callable.

``ratio`` is how many times better the ControlNet scores than the base: ControlNet / base
for scores where higher is better, base / ControlNet for distances and errors.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments.runs import controlnet
from experiments.runtime.errors import ConfigError
from jaxdiff import hint_scores, hints

BASE_SAMPLES = "base_samples.npz"  # the base model's samples, beside samples.npz
LINE_TOL = 0.0  # pixels: a Hough line pixel within this distance of the other map matches
# hint type -> (the headline score, whether higher is better, what it measures)
SCORES = {
    "canny": ("edge_f1", True, "F1 at exact pixels of the samples' Canny edges vs the hint"),
    "hough": ("line_f1", True, f"F1 with {LINE_TOL:g} px tolerance of the samples' Hough "
              "line maps vs the hint's"),
    "scribble": ("chamfer", False, "symmetric chamfer distance (px) between the samples' "
                 "Canny edges and the scribble"),
    "segmentation": ("miou", True, "mean IoU of the regions of the samples' segmentation "
                     "and of the hint"),
    "depth": ("depth_rmse", False, "RMSE between the estimated depth hint of the samples "
              "and the hint (bright = near, in [0, 1])"),
}

Estimator = Callable[[Any], np.ndarray]


def score_samples(config: ml_collections.ConfigDict, images: np.ndarray, hint_maps: np.ndarray,
                  *, estimate_depth: Estimator | None = None) -> dict[str, np.ndarray]:
    """Per-image scores (name -> (N,)) of ``images`` ([-1, 1]) against ``hint_maps``; the
    first entry is the hint type's headline score (``SCORES``)."""
    hint = config.controlnet.hint
    hint_maps = np.asarray(hint_maps)
    if hint == "depth":
        if estimate_depth is None:
            raise ConfigError("scoring depth hints needs a depth estimator (--depth_estimator)")
        estimate = estimate_depth(images)
        z_est, z = hint_scores.hint_to_depth(estimate), hint_scores.hint_to_depth(hint_maps)
        return {"depth_rmse": hint_scores.depth_rmse(estimate, hint_maps),
                "si_log": hint_scores.scale_invariant_log_error(z_est, z)}
    if hint == "scribble":
        edges = hints.canny(images, **controlnet.hint_options(config))
        return {"chamfer": hint_scores.chamfer_distance(edges, hint_maps),
                "edge_f1_tol1": hint_scores.line_scores(edges, hint_maps, tol=1.0)["f1"]}
    made = controlnet.make_hints(config, images)
    if hint == "canny":
        return {"edge_f1": hint_scores.edge_f1(made, hint_maps),
                "edge_f1_tol1": hint_scores.line_scores(made, hint_maps, tol=1.0)["f1"]}
    if hint == "hough":
        lines = hint_scores.line_scores(made, hint_maps, tol=LINE_TOL)
        near = hint_scores.line_scores(made, hint_maps, tol=1.0)
        edges = hints.canny(images, **controlnet.hint_options(config))
        return {"line_f1": lines["f1"], "line_coverage": lines["recall"],
                "line_f1_tol1": near["f1"], "line_coverage_tol1": near["recall"],
                "edge_coverage": hint_scores.line_scores(edges, hint_maps, tol=0)["recall"]}
    k = controlnet.SEGMENTATION_REGIONS
    got, given = (hint_scores.regions(m, num_regions=k) for m in (made, hint_maps))
    # The F1 of each region above the darkest (background) one, averaged.
    fg_f1 = np.mean([hint_scores.edge_f1(got == r, given == r) for r in range(1, k)], axis=0)
    return {"miou": hint_scores.mean_iou(got, given), "foreground_f1": fg_f1}


def improvement(hint: str, controlled: float, base: float) -> float:
    """How many times better the ControlNet's headline score is than the base's."""
    higher_is_better = SCORES[hint][1]
    num, den = (controlled, base) if higher_is_better else (base, controlled)
    return float(num / max(den, 1e-9))


def write_report(path: pathlib.Path, config: ml_collections.ConfigDict, *, images: np.ndarray,
                 base_images: np.ndarray, hint_maps: np.ndarray,
                 estimate_depth: Estimator | None = None,
                 estimator_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scores of the ControlNet's samples and of the base model's (same seed and labels)
    against the same hints, averaged over the images; printed and written as JSON."""
    hint = config.controlnet.hint
    name, higher_is_better, what = SCORES[hint]
    ours, base = (
        {k: float(v.mean()) for k, v in score_samples(
            config, x, hint_maps, estimate_depth=estimate_depth).items()}
        for x in (images, base_images)
    )
    report = {
        "hint": hint, "num_images": int(len(images)), "score": name,
        "higher_is_better": higher_is_better, "description": what,
        "controlnet": ours[name], "base": base[name],
        "ratio": improvement(hint, ours[name], base[name]),
        "controlnet_scores": ours, "base_scores": base,
    }
    if estimator_info is not None:
        report["depth_estimator"] = estimator_info
    path.write_text(json.dumps(report, indent=2) + "\n")
    others = ", ".join(f"{k} {ours[k]:.3f} vs {base[k]:.3f}" for k in ours if k != name)
    print(f"{hint} hints, {what}, over {report['num_images']} images: ControlNet "
          f"{report['controlnet']:.3f}, base model (same seed and labels) {report['base']:.3f} "
          f"({report['ratio']:.2f}x better; {others}); wrote {path}")
    return report


def rescore(out_dir: str | pathlib.Path, config: ml_collections.ConfigDict, *,
            estimate_depth: Estimator | None = None,
            estimator_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``write_report`` again from the uint8 samples a ``--hints_from_data`` run saved
    (``samples.npz`` and ``base_samples.npz`` in ``out_dir``), without sampling: the same
    scores for hints made from the samples (they are made from uint8 grey levels anyway)."""
    out_dir = pathlib.Path(out_dir)
    ours, base = (np.load(out_dir / name) for name in ("samples.npz", BASE_SAMPLES))
    return write_report(
        out_dir / "hint_report.json", config, images=ours["images"] / 127.5 - 1.0,
        base_images=base["images"] / 127.5 - 1.0, hint_maps=ours["hints"],
        estimate_depth=estimate_depth, estimator_info=estimator_info,
    )
