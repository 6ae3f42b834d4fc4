"""diffusers ``DiTPipeline`` folders (``facebook/DiT-XL-2-256`` saved with
``save_pretrained``: ``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``) as a
latent diffusion model in jaxdiff terms: the DiT on latents, the autoencoder that decodes
them, and the schedule and sampling options of the scheduler config."""

from __future__ import annotations

import dataclasses
import pathlib

from jaxdiff import schedules
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.dit import DiT
from jaxdiff.pretrained.autoencoder import load_diffusers_autoencoder
from jaxdiff.pretrained.dit import load_diffusers_dit
from jaxdiff.pretrained.folders import CONFIG_NAME, load_json
from jaxdiff.pretrained.pipeline import PREDICTIONS, VARIANCES, schedule_from_scheduler_config
from jaxdiff.pretrained.unet2d import UnsupportedConfigError

GET_A_DIT_PIPELINE = (
    "on a machine with network access run: python -c \"from diffusers import DiTPipeline; "
    "DiTPipeline.from_pretrained('facebook/DiT-XL-2-256').save_pretrained('DiT-XL-2-256')\", "
    "then copy the folder here"
)


@dataclasses.dataclass(frozen=True)
class LatentPipeline:
    """A DiTPipeline folder read into jaxdiff terms.

    model, params: the DiT on scaled latents (``learn_sigma``: 2C outputs, variance last).
    vae, vae_params: the autoencoder; images = vae.decode(unscale_latents(z)).
    schedule, prediction, clip_sample: the forward process and the sampler's choices.
    variance: DDPM's sampling variance: "learned_range" for a learned-sigma DiT, else the
    scheduler's ("posterior" | "beta"). latent_size, latent_channels: the latents sampled.
    """

    model: DiT
    params: dict
    vae: AutoencoderKL
    vae_params: dict
    schedule: schedules.Schedule
    prediction: str
    clip_sample: bool
    variance: str
    latent_size: int
    latent_channels: int


def is_dit_pipeline(path: str | pathlib.Path) -> bool:
    """Whether ``path`` is a pipeline folder with a ``transformer/`` (a DiTPipeline)."""
    folder = pathlib.Path(path)
    return (folder / "model_index.json").exists() and (folder / "transformer").is_dir()


def load_dit_pipeline(path: str | pathlib.Path) -> LatentPipeline:
    """A DiTPipeline folder -> ``LatentPipeline``; FileNotFoundError says how to get one,
    UnsupportedConfigError names what jaxdiff does not compute."""
    folder = pathlib.Path(path)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder / 'model_index.json'} not found; {GET_A_DIT_PIPELINE}")
    model, params = load_diffusers_dit(folder / "transformer")
    vae, vae_params = load_diffusers_autoencoder(folder / "vae")
    config = load_json(folder / "transformer" / CONFIG_NAME)
    scheduler = load_json(folder / "scheduler" / "scheduler_config.json")
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise UnsupportedConfigError(
            f"prediction_type {kind!r} is not one of {sorted(PREDICTIONS)}")
    if scheduler.get("thresholding", False):
        raise UnsupportedConfigError("scheduler thresholding=True is not supported")
    variance = scheduler.get("variance_type", "fixed_small")
    if model.learn_sigma:
        variance = "learned_range"
    elif variance not in VARIANCES:
        raise UnsupportedConfigError(
            f"variance_type {variance!r} needs a DiT with learned sigma (out_channels = 2 x "
            "in_channels)")
    else:
        variance = VARIANCES[variance]
    return LatentPipeline(
        model=model, params=params, vae=vae, vae_params=vae_params,
        schedule=schedule_from_scheduler_config(scheduler), prediction=PREDICTIONS[kind],
        clip_sample=bool(scheduler.get("clip_sample", True)), variance=variance,
        latent_size=int(config.get("sample_size", 32)),
        latent_channels=int(config.get("in_channels", 4)),
    )
