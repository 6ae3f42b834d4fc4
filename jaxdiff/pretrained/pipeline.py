"""diffusers pipeline folders (``DDPMPipeline.save_pretrained``, the ``google/ddpm-*``
repositories: ``model_index.json``, ``unet/`` and ``scheduler/scheduler_config.json``) in
and out, with the scheduler config as a jaxdiff schedule, prediction and sampling variance."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from jaxdiff import schedules
from jaxdiff.models.unet import UNet
from jaxdiff.pretrained.folders import (
    CONFIG_NAME,
    load_diffusers_unet,
    load_json,
    save_diffusers_unet,
)
from jaxdiff.pretrained.unet2d import UnsupportedConfigError

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "posterior", "fixed_large": "beta"}


def schedule_from_scheduler_config(config: Mapping[str, Any]) -> schedules.Schedule:
    """The jaxdiff schedule of a diffusers scheduler config (``trained_betas``, or
    ``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2 = Improved DDPM's cosine)."""
    num = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        return schedules.from_betas(jnp.asarray(config["trained_betas"], jnp.float32))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return schedules.linear(num, beta_start=start, beta_end=end)
    if kind == "scaled_linear":
        return schedules.scaled_linear(num, beta_start=start, beta_end=end)
    if kind == "squaredcos_cap_v2":
        return schedules.cosine(num)
    raise UnsupportedConfigError(
        f"beta_schedule {kind!r} is not supported (linear, scaled_linear, squaredcos_cap_v2)"
    )


def scheduler_config(
    *, schedule: str, num_timesteps: int, prediction: str, beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> dict[str, Any]:
    """The DDPMScheduler config of a jaxdiff schedule ("linear", "scaled_linear" or
    "cosine") and prediction, the inverse of ``schedule_from_scheduler_config``."""
    kinds = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
    if schedule not in kinds:
        raise ValueError(f"schedule {schedule!r} has no diffusers name ({sorted(kinds)})")
    return {
        "num_train_timesteps": int(num_timesteps),
        "beta_schedule": kinds[schedule],
        "beta_start": float(beta_start),
        "beta_end": float(beta_end),
        "prediction_type": {v: k for k, v in PREDICTIONS.items()}[prediction],
        "variance_type": "fixed_small",
        "clip_sample": True,
    }


def sampling_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """How a diffusers scheduler config samples, in jaxdiff's terms: {'prediction',
    'clip_x0', 'variance', 'spacing'}. Each setting jaxdiff does not compute is refused by
    name (UnsupportedConfigError) rather than dropped, so a folder never samples differently
    from its diffusers pipeline without a word."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise UnsupportedConfigError(
            f"prediction_type {kind!r} is not one of {sorted(PREDICTIONS)}"
        )
    variance = config.get("variance_type", "fixed_small")
    if variance not in VARIANCES:
        raise UnsupportedConfigError(
            f"variance_type {variance!r} is not supported ({sorted(VARIANCES)}); learned "
            "variances need a model with 2C outputs"
        )
    if config.get("thresholding", False):  # sample_max_value is read only with it
        raise UnsupportedConfigError(
            "scheduler thresholding=True (dynamic thresholding with sample_max_value) is not "
            "supported"
        )
    if config.get("rescale_betas_zero_snr", False):
        raise UnsupportedConfigError(
            "scheduler rescale_betas_zero_snr=True (zero terminal SNR, Lin et al. 2024) is not "
            "supported"
        )
    clip = bool(config.get("clip_sample", True))
    if clip and float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise UnsupportedConfigError(
            f"scheduler clip_sample_range={config['clip_sample_range']} is not supported: "
            "jaxdiff clips x0 to [-1, 1] (clip_sample_range=1.0)"
        )
    spacing = config.get("timestep_spacing", "leading")  # diffusers' default
    if spacing not in ("linspace", "trailing", "leading"):
        raise UnsupportedConfigError(
            f"scheduler timestep_spacing {spacing!r} is not one of linspace, leading, trailing"
        )
    if int(config.get("steps_offset", 0)) != 0:
        raise UnsupportedConfigError(
            f"scheduler steps_offset={config['steps_offset']} is not supported (it shifts "
            "diffusers' leading grid); jaxdiff's grids take steps_offset=0"
        )
    return {"prediction": PREDICTIONS[kind], "clip_x0": clip, "variance": VARIANCES[variance],
            "spacing": spacing}


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A pipeline folder read into jaxdiff terms.

    model, params: the UNet and its parameters. schedule: the forward process.
    prediction: "eps" | "x0" | "v". clip_sample: clip x0 to [-1, 1] while sampling.
    variance: DDPM's sampling variance, "posterior" (beta tilde, fixed_small) or "beta"
    (fixed_large). spacing: the strided samplers' timestep grid (``timestep_spacing``, see
    ``samplers.timestep_grid``). image_size, channels: the images the UNet was trained on.
    scheduler_config: the raw scheduler config.
    """

    model: UNet
    params: dict
    schedule: schedules.Schedule
    prediction: str
    clip_sample: bool
    variance: str
    spacing: str
    image_size: int | None
    channels: int
    scheduler_config: dict


def load_diffusers_pipeline(path: str | pathlib.Path) -> Pretrained:
    """A diffusers pipeline folder (``model_index.json``, ``unet/``,
    ``scheduler/scheduler_config.json``) -> ``Pretrained``.

    Raises FileNotFoundError (with how to get one on a networked machine) when the folder
    is not there, UnsupportedConfigError for settings jaxdiff does not compute.
    """
    folder = pathlib.Path(path)
    load_json(folder / "model_index.json")
    model, params = load_diffusers_unet(folder / "unet")
    unet_config = load_json(folder / "unet" / CONFIG_NAME)
    scheduler = load_json(folder / "scheduler" / "scheduler_config.json")
    settings = sampling_settings(scheduler)
    sample_size = unet_config.get("sample_size")
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    return Pretrained(
        model=model,
        params=params,
        schedule=schedule_from_scheduler_config(scheduler),
        prediction=settings["prediction"],
        clip_sample=settings["clip_x0"],
        variance=settings["variance"],
        spacing=settings["spacing"],
        image_size=None if sample_size is None else int(sample_size),
        channels=int(unet_config.get("in_channels", 3)),
        scheduler_config=scheduler,
    )


def save_diffusers_pipeline(
    model: UNet,
    params: Any,
    path: str | pathlib.Path,
    *,
    scheduler_config: Mapping[str, Any],
    sample_size: int | None = None,
) -> pathlib.Path:
    """Writes a DDPMPipeline folder: ``unet/`` (``save_diffusers_unet``), the given
    ``scheduler/scheduler_config.json`` and ``model_index.json``. Returns the folder."""
    folder = pathlib.Path(path)
    save_diffusers_unet(model, params, folder / "unet", sample_size=sample_size)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {"_class_name": "DDPMScheduler", **scheduler_config}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": "DDPMPipeline",
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder
