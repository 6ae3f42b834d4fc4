"""Which kind of run a config describes, decided here and nowhere else.

``KINDS`` is the table: the first row whose test a config passes names its kind (ControlNet,
noise-conditioned classifier, autoencoder, latent diffusion, distillation student,
fine-tune, plain diffusion), and
``kind_of`` hands back that kind's object. Each kind answers the same questions
(``RunKind``): how to resolve and check the config, and which model, loss, optimizer,
training data, initial state and preview its run has. The train loop and the sampling code
ask the kind instead of testing the config themselves.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from experiments.runs import (
    autoencoder,
    builders,
    classifier,
    controlnet,
    depth_estimator,
    finetune,
    latent,
    training_data,
)
from experiments.runs.preview import SamplePreview
from experiments.runs.validation import validate_config
from jaxdiff import losses, schedules
from jaxdiff import train as jd_train


class Preview(Protocol):
    def write(self, step: int, params: Any, writer: Any) -> None: ...


class RunKind(Protocol):
    """What the train loop and the sampling code need from a kind of run."""

    name: str

    def resolve(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The config the run trains under (a fine-tune takes its model from the weights)."""

    def validate(self, config: ml_collections.ConfigDict, *, num_devices: int) -> None: ...

    def build_model(
        self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None = None, *,
        for_training: bool = False,
    ) -> nn.Module: ...

    def build_loss(
        self, config: ml_collections.ConfigDict, model: nn.Module, schedule: schedules.Schedule
    ) -> losses.LossFn: ...

    def build_optimizer(
        self, config: ml_collections.ConfigDict
    ) -> optax.GradientTransformation: ...

    def build_data(self, config: ml_collections.ConfigDict, *, start_batch: int = 0) -> Any: ...

    def initial_state(
        self, config: ml_collections.ConfigDict, model: nn.Module,
        optimizer: optax.GradientTransformation, key: jax.Array,
    ) -> jd_train.TrainState | None:
        """A fresh run's state made on the host, or None: random init, compiled on the mesh."""

    def preview(self, config, model, schedule, workdir, key, mesh) -> Preview: ...


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax module ``config.model`` describes: a noise-conditioned classifier or a
    denoiser (for a ControlNet run, its base UNet)."""
    if classifier.is_classifier(config):
        return classifier.build_model(config)
    return builders.build_model(config)


@dataclasses.dataclass(frozen=True)
class Diffusion:
    """A denoising diffusion model trained from random weights; previews are sample grids."""

    name = "diffusion"

    def resolve(self, config):
        return config

    def validate(self, config, *, num_devices):
        validate_config(config, num_devices=num_devices)

    def build_model(self, config, workdir=None, *, for_training=False):
        return build_model(config)

    def build_loss(self, config, model, schedule):
        return builders.build_loss(config, model, schedule)

    def build_optimizer(self, config):
        return builders.build_optimizer(config)

    def build_data(self, config, *, start_batch=0):
        return training_data.build_data(config, start_batch=start_batch)

    def initial_state(self, config, model, optimizer, key):
        return None

    def preview(self, config, model, schedule, workdir, key, mesh):
        return SamplePreview(config, model, schedule, workdir, key, mesh)


@dataclasses.dataclass(frozen=True)
class Classifier(Diffusion):
    """A noise-conditioned classifier for classifier guidance (experiments/runs/classifier.py);
    its preview is the accuracy by noise level."""

    name = "classifier"

    def preview(self, config, model, schedule, workdir, key, mesh):
        return classifier.NoiseLevelAccuracy(config, model, schedule, workdir, key, mesh)


@dataclasses.dataclass(frozen=True)
class Autoencoder(Diffusion):
    """The autoencoder of latent diffusion (experiments/runs/autoencoder.py): reconstruction
    + KL loss; its preview is reconstructions of held-out images and their error."""

    name = "autoencoder"

    def validate(self, config, *, num_devices):
        super().validate(config, num_devices=num_devices)
        autoencoder.validate(config)

    def build_model(self, config, workdir=None, *, for_training=False):
        return autoencoder.build_model(config)

    def build_loss(self, config, model, schedule):
        return autoencoder.build_loss(config, model)

    def preview(self, config, model, schedule, workdir, key, mesh):
        return autoencoder.ReconstructionPreview(config, model, workdir)


@dataclasses.dataclass(frozen=True)
class LatentDiffusion(Diffusion):
    """A diffusion model on an autoencoder run's cached latents (experiments/runs/latent.py);
    previews are decoded sample grids."""

    name = "latent"

    def resolve(self, config):
        return latent.resolve(config)

    def build_data(self, config, *, start_batch=0):
        return latent.build_data(config, start_batch=start_batch)

    def preview(self, config, model, schedule, workdir, key, mesh):
        return SamplePreview(config, model, schedule, workdir, key, mesh,
                             decode=latent.decoder(config))


@dataclasses.dataclass(frozen=True)
class ControlNet(Diffusion):
    """A ControlNet over a frozen base UNet (experiments/runs/controlnet.py): hinted data and
    loss; previews show held-out hints above their samples."""

    name = "controlnet"

    def validate(self, config, *, num_devices):
        super().validate(config, num_devices=num_devices)
        controlnet.validate(config)

    def build_model(self, config, workdir=None, *, for_training=False):
        return controlnet.build_model(config, workdir, for_training=for_training)

    def build_loss(self, config, model, schedule):
        return controlnet.build_loss(config, model, schedule)

    def build_data(self, config, *, start_batch=0):
        return controlnet.build_data(config, start_batch=start_batch)

    def preview(self, config, model, schedule, workdir, key, mesh):
        def hinted(num: int, ncol: int):
            cond, _ = controlnet.sample_conds(
                config, None, hint_image=None, hint_type=None, compute_hint=False,
                hints_from_data=num,
            )
            hint_maps = np.asarray(cond["hint"])
            return cond, lambda images: controlnet.hints_above(images, hint_maps, ncol=ncol)

        return SamplePreview(config, model, schedule, workdir, key, mesh, cond_and_show=hinted)


@dataclasses.dataclass(frozen=True)
class DepthEstimator(Diffusion):
    """A depth estimator trained on rendered scenes (experiments/runs/depth_estimator.py): a
    UNet at timestep 0 regressing the depth hint; its preview is the held-out error."""

    name = "depth_estimator"

    def validate(self, config, *, num_devices):
        super().validate(config, num_devices=num_devices)
        depth_estimator.validate(config)

    def build_loss(self, config, model, schedule):
        return depth_estimator.build_loss(config, model, schedule)

    def preview(self, config, model, schedule, workdir, key, mesh):
        return depth_estimator.HeldOutDepthError(config, model, schedule, workdir, key, mesh)


@dataclasses.dataclass(frozen=True)
class FineTune(Diffusion):
    """A run that starts from pretrained weights (``init_from``) and may freeze some of them
    (``finetune.frozen``; experiments/runs/finetune.py)."""

    name = "finetune"

    def resolve(self, config):
        return finetune.resolve(config)

    def build_optimizer(self, config):
        return finetune.build_optimizer(config)

    def initial_state(self, config, model, optimizer, key):
        if not config.get("init_from"):
            return None
        return finetune.init_state(config, model, optimizer, key)


@dataclasses.dataclass(frozen=True)
class Student(Diffusion):
    """A progressive-distillation student (experiments/runs/distillation.py): trained by
    ``loss_fn``, which closes over its teacher, from a copy of the teacher's params. Without
    them (a student's workdir read back for sampling) it is an ordinary diffusion model."""

    name = "student"
    loss_fn: losses.LossFn | None = None
    init_params: Any = None

    def build_loss(self, config, model, schedule):
        return self.loss_fn or super().build_loss(config, model, schedule)

    def initial_state(self, config, model, optimizer, key):
        if self.init_params is None:
            return None  # the rng a fresh init_state would draw
        return jd_train.create_train_state(self.init_params, optimizer, jax.random.split(key)[1])


def is_student(config: ml_collections.ConfigDict) -> bool:
    return config.get("distill", {}).get("student_steps") is not None


def is_finetune(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("init_from") or (config.get("finetune") or {}).get("frozen"))


KINDS: tuple[tuple[Callable[[ml_collections.ConfigDict], bool], type[Diffusion]], ...] = (
    (controlnet.enabled, ControlNet),
    (classifier.is_classifier, Classifier),
    (autoencoder.is_autoencoder, Autoencoder),
    (latent.is_latent, LatentDiffusion),
    (depth_estimator.is_depth_estimator, DepthEstimator),
    (is_student, Student),
    (is_finetune, FineTune),
    (lambda config: True, Diffusion),
)


def kind_of(config: ml_collections.ConfigDict, **context: Any) -> RunKind:
    """The kind of run ``config`` describes: the first row of ``KINDS`` whose test it
    passes. ``context`` is what the config cannot hold (a student's ``loss_fn`` and
    ``init_params``)."""
    for test, kind in KINDS:
        if test(config):
            return kind(**context)
    raise AssertionError("the last row of KINDS takes every config")
