"""A depth-estimator run (configs/scenes_depth_estimator.py): a small UNet trained by
``experiments.train`` to read the depth of rendered scenes (``jaxdiff.depth_estimation``),
then used to score depth ControlNets (experiments/runs/hint_report.py).

A config with a ``depth_estimator`` section is such a run (``kinds`` hands it here). Its
preview is the held-out error: ``depth_estimator.eval_num`` scenes rendered with
``depth_estimator.eval_seed`` (never trained on: the training scenes use ``data.seed``),
the estimate's RMSE and scale-invariant log error (Eigen et al. 2014 eq. 4, lambda = 1)
next to those of predicting the training scenes' mean depth hint everywhere, written to
``depth_eval.json`` (one entry per preview step).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments.runs import builders, restore
from experiments.runtime.errors import ConfigError
from jaxdiff import depth_estimation, hint_scores, scenes, sources

EVAL_FILE = "depth_eval.json"


def is_depth_estimator(config: ml_collections.ConfigDict) -> bool:
    return "depth_estimator" in config


def validate(config: ml_collections.ConfigDict) -> None:
    if config.data.source != "scenes":
        raise ConfigError(
            "a depth estimator trains on images with their exact depth: use "
            f"data.source='scenes', got {config.data.source!r}"
        )
    e = config.depth_estimator
    if int(e.eval_seed) == int(config.data.get("seed") or 0):
        raise ConfigError(
            f"depth_estimator.eval_seed={e.eval_seed} renders the training scenes again "
            "(data.seed); choose another seed for held-out scenes"
        )


def build_loss(config: ml_collections.ConfigDict, model: Any, schedule: Any) -> Any:
    del config, schedule
    return depth_estimation.make_depth_loss(model.apply)


def depth_errors(estimate: np.ndarray, hint: np.ndarray) -> dict[str, float]:
    """Mean RMSE of the hints and mean scale-invariant log error of the depths z = 1 - h."""
    return {
        "rmse": float(hint_scores.depth_rmse(estimate, hint).mean()),
        "si_log": float(hint_scores.scale_invariant_log_error(
            hint_scores.hint_to_depth(estimate), hint_scores.hint_to_depth(hint)).mean()),
    }


class HeldOutDepthError:
    """experiments.train's preview of a depth-estimator run: its error on held-out scenes
    next to the mean-depth baseline's (``depth_eval.json``, TensorBoard ``depth_eval/*``)."""

    def __init__(self, config, model, schedule, workdir, key, mesh):
        del schedule, key, mesh
        e = config.depth_estimator
        heldout = scenes.load_scenes(int(e.eval_num), size=int(config.data.image_size),
                                     seed=int(e.eval_seed))
        self.images = heldout.images.astype(np.float32) / 127.5 - 1.0
        self.hints = heldout.hints
        train_mean = float(np.mean(sources.make_source(config.data).hints))
        self.baseline = depth_errors(np.full_like(self.hints, train_mean), self.hints)
        self.baseline["mean_hint"] = train_mean
        self.apply = model.apply
        self.path = pathlib.Path(workdir) / EVAL_FILE

    def write(self, step: int, params: Any, writer: Any) -> None:
        estimate = depth_estimation.make_estimator(self.apply, params)(self.images)
        if writer is None:
            return
        errors = depth_errors(estimate, self.hints)
        entry = {"step": step, "num_images": len(self.images), **errors,
                 "mean_depth_baseline": self.baseline,
                 "rmse_ratio": self.baseline["rmse"] / max(errors["rmse"], 1e-12)}
        history = json.loads(self.path.read_text()) if self.path.exists() else []
        history = [h for h in history if h["step"] < step] + [entry]
        self.path.write_text(json.dumps(history, indent=1) + "\n")
        for name in ("rmse", "si_log"):
            writer.add_scalar(f"depth_eval/{name}", errors[name], step)
        print(f"depth estimator, step {step}: held-out RMSE {errors['rmse']:.4f}, si-log "
              f"{errors['si_log']:.4f} (mean-depth baseline: RMSE {self.baseline['rmse']:.4f}, "
              f"si-log {self.baseline['si_log']:.4f}); wrote {self.path}")


def load_estimator(workdir: str, *, image_size: int | None = None
                   ) -> tuple[Callable[[Any], np.ndarray], dict[str, Any]]:
    """(images in [-1, 1] -> depth hints in [0, 1], {'workdir', 'step', 'image_size'}) from
    the EMA params of a depth-estimator run's newest checkpoint; ``image_size``: the size
    of the images it will read (checked against the size it was trained on)."""
    try:
        config = restore.load_run_config(workdir)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the depth estimator {workdir} is missing or unreadable: {e}") from None
    if not is_depth_estimator(config):
        raise ConfigError(
            f"{workdir} is not a depth-estimator run; train one with --config "
            "configs/scenes_depth_estimator.py"
        )
    if image_size is not None and int(image_size) != int(config.data.image_size):
        raise ConfigError(
            f"the depth estimator {workdir} reads {config.data.image_size}x"
            f"{config.data.image_size} images, these are {image_size}x{image_size}; train it "
            f"with --config.data.image_size={image_size}"
        )
    model = builders.build_model(config)
    _, ema, step = restore.restore_for_sampling(config, workdir, model)
    info = {"workdir": str(workdir), "step": int(step),
            "image_size": int(config.data.image_size)}
    return depth_estimation.make_estimator(model.apply, ema), info
