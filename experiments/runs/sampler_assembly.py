"""Sampling assembly: a config's sampler, guidance and model as one jitted function."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.runs import formulations
from experiments.runs.builders import cond_spec
from experiments.runs.validation import STRIDED
from jaxdiff import guidance, samplers, schedules, xla_options


def make_sample_fn(
    model: nn.Module,
    schedule: schedules.Schedule,
    *,
    sampler: str,
    steps: int,
    eta: float,
    guidance_scale: float,
    prediction: str,
    shape: tuple[int, ...],
    keep_every: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    spacing: str | None = None,
    clip_x0: bool | None = None,
    variance: str | None = None,
    classifier_apply: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
    classifier_scale: float = 0.0,
    decode: Callable[[jax.Array], jax.Array] | None = None,
    config: Any = None,
) -> Callable[..., tuple[jax.Array, jax.Array | None]]:
    """``sample(params, key, cond, classifier_params=None) -> (images (B,H,W,C) in [-1,1],
    trajectory)``, jitted.

    ``spacing`` ("linspace" | "trailing" | "leading", ``samplers.timestep_grid``) is the
    timestep grid of ddim and dpm_solver_pp; None keeps each sampler's default.

    params and cond are arguments, not constants baked into the program, so one compile
    serves every checkpoint (the train loop's previews) and every label set. With
    ``classifier_apply(classifier_params, x_t, t) -> logits`` and ``classifier_scale`` > 0,
    classifier guidance toward the int labels ``cond`` wraps the (CFG-guided) denoiser; an
    unconditional model is then called without the labels.

    ``decode(latents) -> images`` (a latent run's autoencoder, experiments/runs/latent.py)
    turns the samples and the trajectory's frames into images; x0 is then not clipped
    unless ``clip_x0`` says so (latents are not in [-1, 1]).

    The continuous-time samplers (flow_euler, flow_heun, edm_heun) need the run's ``config``
    (``experiments.runs.formulations``): EDM's model is wrapped in its preconditioning.
    """
    if decode is not None and clip_x0 is None:
        clip_x0 = False
    num_classes, _ = cond_spec(model)
    continuous = sampler in formulations.CONTINUOUS_SAMPLERS
    if continuous:
        if config is None:
            raise ValueError(f"sampler {sampler!r} needs the run's config")
        call = formulations.sampler_call(config, sampler, steps=steps, shape=shape,
                                         keep_every=keep_every, mesh=mesh)
        sample_fn = None
    else:
        sample_fn = getattr(samplers, sampler)
    # ddpm and ddpm_no_noise walk all T steps; ddim strides over ``steps`` of them; the
    # corruption baseline's model predicts the clean image, whatever the config says.
    options: dict[str, Any] = {"keep_every": keep_every, "prediction": prediction, "mesh": mesh}
    if sampler in STRIDED:
        options.update(num_steps=int(steps))
        if spacing is not None:
            options.update(spacing=spacing)
    if sampler == "ddim":
        options.update(eta=float(eta))
    elif sampler == "corruption":
        options.update(num_steps=int(steps), prediction="x0")
    if clip_x0 is not None and sampler != "corruption":  # a pretrained scheduler's choices
        options["clip_x0"] = bool(clip_x0)
    if variance is not None and sampler == "ddpm":
        options["variance"] = variance

    guided_by_classifier = classifier_apply is not None and classifier_scale != 0
    # The labels are the classifier's; an unconditional model never sees them (at s = 0 too).
    drop_cond = classifier_apply is not None and not any(cond_spec(model))

    def run(params, key, cond, classifier_params=None):
        def denoise_fn(x_t, t, c):
            return model.apply({"params": params}, x_t, t, None if drop_cond else c)

        if continuous:
            denoise_fn = formulations.wrap_model(config, denoise_fn)
        if guidance_scale > 0:
            denoise_fn = guidance.cfg(
                denoise_fn, guidance_scale=guidance_scale, num_classes=num_classes
            )
        if guided_by_classifier:
            denoise_fn = guidance.classifier_guidance(
                denoise_fn, functools.partial(classifier_apply, classifier_params), schedule,
                scale=classifier_scale, prediction=prediction,
            )
        if continuous:
            images, trajectory = call(denoise_fn, key, cond)
        else:
            images, trajectory = sample_fn(denoise_fn, schedule, key, shape, cond=cond, **options)
        if decode is not None:
            images = decode(images)
            trajectory = None if trajectory is None else jax.lax.map(decode, trajectory)
        return jnp.clip(images, -1.0, 1.0), trajectory

    return xla_options.jit(run)


def grid_columns(num_images: int, rows: int) -> int:
    return num_images // rows if rows else math.ceil(math.sqrt(num_images))
