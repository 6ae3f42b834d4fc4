"""Static checks of a run's config and of sampling options, before anything compiles: every
mistake raises ``ConfigError`` with a one-line message that names the field and the fix."""

from __future__ import annotations

import ml_collections

from experiments.runs import classifier, formulations
from experiments.runtime.errors import ConfigError
from jaxdiff import models, schedules
from jaxdiff.samplers import grids

SCHEDULES = ("linear", "cosine", "scaled_linear")
LOSSES = ("denoising", "corruption", "noisy_classifier", "flow_matching", "edm")
SAMPLERS = ("ddpm", "ddpm_no_noise", "ddim", "dpm_solver_pp", "corruption",
            *formulations.CONTINUOUS_SAMPLERS)
STRIDED = ("ddim", "dpm_solver_pp")  # samplers that take num_steps <= T and a grid spacing
WALKS_ALL_STEPS = ("ddpm", "ddpm_no_noise")  # samplers that walk all T steps


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Static checks of the fields a typo or a bad override breaks (before any compile)."""
    t, d, s = config.train, config.diffusion, config.sample
    for name in ("steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
        if int(t[name]) <= 0:
            raise ConfigError(f"train.{name} must be a positive integer, got {t[name]}")
    if int(config.data.batch_size) <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {config.data.batch_size}")
    if config.data.batch_size % num_devices:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} does not split over {num_devices} "
            f"devices; use a multiple of {num_devices}"
        )
    if float(t.learning_rate) <= 0:
        raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate}")
    if not 0.0 <= float(t.cond_drop_prob) <= 1.0:
        raise ConfigError(f"train.cond_drop_prob must be in [0, 1], got {t.cond_drop_prob}")
    if not 0.0 <= float(t.ema_decay) <= 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1], got {t.ema_decay}")
    if config.model.name not in models.MODEL_NAMES:
        raise ConfigError(
            f"model.name must be one of {models.MODEL_NAMES}, got {config.model.name!r}"
        )
    if d.schedule not in SCHEDULES:
        raise ConfigError(f"diffusion.schedule must be one of {SCHEDULES}, got {d.schedule!r}")
    if d.prediction not in schedules.PREDICTIONS:
        raise ConfigError(
            f"diffusion.prediction must be one of {schedules.PREDICTIONS}, got {d.prediction!r}"
        )
    if d.loss not in LOSSES:
        raise ConfigError(f"diffusion.loss must be one of {LOSSES}, got {d.loss!r}")
    if int(d.num_timesteps) < 1:
        raise ConfigError(f"diffusion.num_timesteps must be >= 1, got {d.num_timesteps}")
    classifier.validate(config)
    formulations.validate(config)
    validate_sampling(
        config, sampler=s.sampler, steps=s.steps, eta=s.eta, guidance_scale=s.guidance_scale
    )


def validate_sampling(
    config: ml_collections.ConfigDict,
    *,
    sampler: str,
    steps: int,
    eta: float,
    guidance_scale: float,
) -> None:
    """Checks sampler options (config.sample or sample.py's flags) against the run's config."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    formulations.check_sampler(config, sampler)
    if (sampler == "corruption") != (config.diffusion.loss == "corruption"):
        raise ConfigError(
            f"sampler {sampler!r} does not match diffusion.loss={config.diffusion.loss!r}: the "
            "corruption sampler goes with the corruption loss only"
        )
    if int(steps) < 1:
        raise ConfigError(f"sample steps must be >= 1, got {steps}")
    if sampler in STRIDED and int(steps) > int(config.diffusion.num_timesteps):
        raise ConfigError(
            f"{sampler} steps={steps} exceed diffusion.num_timesteps="
            f"{config.diffusion.num_timesteps}"
        )
    spacing = config.sample.get("spacing")
    if spacing is not None and spacing not in grids.SPACINGS:
        raise ConfigError(f"sample.spacing must be one of {', '.join(grids.SPACINGS)}, got "
                          f"{spacing!r}")
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    if guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be >= 0, got {guidance_scale}")
    if guidance_scale > 0 and not is_conditional(config):
        raise ConfigError(
            f"guidance_scale={guidance_scale} needs a conditional model, but model "
            f"{config.model.name!r} has no num_classes/context_dim; set guidance_scale=0"
        )


def is_conditional(config: ml_collections.ConfigDict) -> bool:
    if config.model.name == "context_unet":
        return True  # always takes a context; zeros is the null one
    return bool(config.model.get("num_classes")) or bool(config.model.get("context_dim"))
