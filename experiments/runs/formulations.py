"""The continuous-time formulations of a run (``diffusion.loss``): flow matching and EDM.

Which samplers fit which loss, the loss a flow/EDM config trains with, and the sampler
call and denoiser wrapping a flow/EDM run samples with. Denoising (DDPM) runs go through
``builders`` and ``sampler_assembly`` as before; this module answers only for
``diffusion.loss`` = "flow_matching" | "edm".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from experiments.runtime.errors import ConfigError
from jaxdiff import edm, flow_matching, losses, samplers

FLOW_SAMPLERS = ("flow_euler", "flow_heun")
EDM_SAMPLERS = ("edm_heun",)
CONTINUOUS_SAMPLERS = FLOW_SAMPLERS + EDM_SAMPLERS
DDPM_SAMPLERS = ("ddpm", "ddpm_no_noise", "ddim", "dpm_solver_pp")
# diffusion.loss -> the samplers that integrate what it trains.
SAMPLERS_OF_LOSS = {
    "denoising": DDPM_SAMPLERS,
    "noisy_classifier": DDPM_SAMPLERS,
    "corruption": ("corruption",),
    "flow_matching": FLOW_SAMPLERS,
    "edm": EDM_SAMPLERS,
}
CONTINUOUS_LOSSES = ("flow_matching", "edm")


def is_continuous(config: ml_collections.ConfigDict) -> bool:
    return config.diffusion.loss in CONTINUOUS_LOSSES


def check_sampler(config: ml_collections.ConfigDict, sampler: str) -> None:
    """A one-line ConfigError when ``sampler`` does not integrate the run's formulation."""
    loss = config.diffusion.loss
    fitting = SAMPLERS_OF_LOSS.get(loss, ())
    if sampler not in fitting:
        raise ConfigError(
            f"sampler {sampler!r} does not fit diffusion.loss={loss!r}; use "
            f"{' or '.join(fitting)}"
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """Static checks of a flow/EDM config's fields."""
    d = config.diffusion
    if d.loss == "flow_matching":
        if d.get("time_sampling", "uniform") not in flow_matching.TIME_SAMPLINGS:
            raise ConfigError(
                f"diffusion.time_sampling must be one of {flow_matching.TIME_SAMPLINGS}, "
                f"got {d.time_sampling!r}"
            )
        if float(config.sample.get("shift", 1.0)) <= 0:
            raise ConfigError(f"sample.shift must be > 0, got {config.sample.shift}")
    if d.loss == "edm":
        lo, hi = float(d.get("sigma_min", edm.SIGMA_MIN)), float(d.get("sigma_max", edm.SIGMA_MAX))
        if not 0 < lo < hi:
            raise ConfigError(f"need 0 < diffusion.sigma_min < sigma_max, got {lo}, {hi}")
        if float(d.get("sigma_data", edm.SIGMA_DATA)) <= 0:
            raise ConfigError(f"diffusion.sigma_data must be > 0, got {d.sigma_data}")


def build_loss(
    config: ml_collections.ConfigDict, model: nn.Module, num_classes: int | None
) -> losses.LossFn:
    d = config.diffusion
    drop = float(config.train.cond_drop_prob)
    if d.loss == "flow_matching":
        return losses.make_flow_matching_loss(
            model.apply, time_sampling=d.get("time_sampling", "uniform"),
            logit_mean=float(d.get("logit_mean", 0.0)), logit_std=float(d.get("logit_std", 1.0)),
            cond_drop_prob=drop, num_classes=num_classes,
        )
    return losses.make_edm_loss(
        model.apply, sigma_data=float(d.get("sigma_data", edm.SIGMA_DATA)),
        p_mean=float(d.get("p_mean", edm.P_MEAN)), p_std=float(d.get("p_std", edm.P_STD)),
        cond_drop_prob=drop, num_classes=num_classes,
    )


def wrap_model(
    config: ml_collections.ConfigDict, model_fn: Callable[..., Any]
) -> Callable[..., Any]:
    """The ``denoise_fn`` a flow/EDM sampler calls: the model itself (a velocity) for flow,
    EDM's preconditioned D(x; sigma) (``edm.precondition``) for EDM."""
    if config.diffusion.loss == "edm":
        return edm.precondition(
            model_fn, sigma_data=float(config.diffusion.get("sigma_data", edm.SIGMA_DATA))
        )
    return model_fn


def sampler_call(
    config: ml_collections.ConfigDict, sampler: str, *, steps: int, shape: tuple[int, ...],
    keep_every: int, mesh: Any,
) -> Callable[..., Any]:
    """``call(denoise_fn, key, cond) -> (samples, trajectory)`` for a flow/EDM sampler with
    the run's options (flow: ``sample.shift``; EDM: ``diffusion.sigma_min/sigma_max/rho``)."""
    check_sampler(config, sampler)
    d, s = config.diffusion, config.sample
    options: dict[str, Any] = {"num_steps": int(steps), "keep_every": keep_every, "mesh": mesh}
    if sampler in FLOW_SAMPLERS:
        options.update(shift=float(s.get("shift", 1.0)))
    else:
        options.update(
            sigma_min=float(d.get("sigma_min", edm.SIGMA_MIN)),
            sigma_max=float(d.get("sigma_max", edm.SIGMA_MAX)),
            rho=float(d.get("rho", edm.RHO)), s_churn=float(s.get("s_churn", 0.0)),
        )
    sample_fn = getattr(samplers, sampler)
    return lambda denoise_fn, key, cond: sample_fn(denoise_fn, key, shape, cond=cond, **options)


def model_evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of one sample (without CFG's doubling): Euler 1 per step, flow
    Heun 2, EDM Heun 2 but 1 on its last step."""
    if sampler == "flow_heun":
        return 2 * steps
    if sampler == "edm_heun":
        return 2 * steps - 1
    return steps
