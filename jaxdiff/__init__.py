"""jaxdiff: a pure-JAX, functional research codebase for diffusion models.

The public functional API, one module per concept::

    import jaxdiff as jd
    schedule = jd.schedules.linear(1000)
    loss_fn = jd.losses.make_denoising_loss(model.apply, schedule, prediction="eps")
    samples, trajectory = jd.samplers.ddim(denoise_fn, schedule, key, shape, num_steps=50)

``data``, ``sources``, ``checkpoint``, ``evaluation`` and ``pretrained`` pull in TFDS, grain,
orbax and safetensors, so they are imported on first use (``jd.data``) rather than with the
package; so are ``fid``, ``inception`` and ``precision_recall`` (pytorch-fid's FID, scipy)
and ``latent``, ``latent_cache`` and ``autoencoder_loss`` (latent diffusion).
"""

import importlib

from jaxdiff import (
    conditioning,
    distillation,
    edm,
    flow_matching,
    guidance,
    losses,
    models,
    optim,
    samplers,
    schedules,
    train,
    viz,
)

# DPM-Solver++'s module, also reachable as jd.dpm_solver.
from jaxdiff.samplers import dpm_solver

_LAZY = ("data", "sources", "checkpoint", "evaluation", "pretrained", "fid", "inception",
         "precision_recall", "latent", "latent_cache", "autoencoder_loss")

__all__ = [
    "conditioning",
    "distillation",
    "dpm_solver",
    "edm",
    "flow_matching",
    "guidance",
    "losses",
    "models",
    "optim",
    "samplers",
    "schedules",
    "train",
    "viz",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"jaxdiff.{name}")
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
