"""The objects a config describes: the denoising model, its schedule, loss and optimizer,
the mesh and a fresh TrainState. Every user mistake raises ``ConfigError``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments.runs import formulations
from experiments.runtime.errors import ConfigError
from jaxdiff import losses, models, optim, schedules
from jaxdiff import train as jd_train
from jaxdiff.models.autoencoder import AutoencoderKL


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The denoising Flax module of ``config.model``, checked against the data's image shape
    (a classifier run's model: ``experiments.runs.kinds.build_model``)."""
    try:
        model = models.build(config.model)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from None
    x = jax.ShapeDtypeStruct(image_shape(config, batch=1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    try:
        variables = jax.eval_shape(model.init, jax.random.key(0), x, t, None)
        out = jax.eval_shape(model.apply, variables, x, t, None)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"model {config.model.name!r} cannot take {x.shape[1]}x{x.shape[2]}x{x.shape[3]} "
            f"images (data.image_size, data.channels): {e}"
        ) from None
    if out.shape != x.shape:
        raise ConfigError(
            f"model {config.model.name!r} maps {x.shape} images to {out.shape}; set "
            "model.out_channels to the image channels"
        )
    return model


def image_shape(config: ml_collections.ConfigDict, *, batch: int) -> tuple[int, int, int, int]:
    """The shape the model denoises: the images', or a latent run's latents'
    (``latent.size``, ``latent.channels``; experiments/runs/latent.py)."""
    if config.get("latent", {}).get("size"):
        return (batch, int(config.latent.size), int(config.latent.size),
                int(config.latent.channels))
    size = int(config.data.image_size)
    return (batch, size, size, int(config.data.channels))


def cond_spec(model: nn.Module) -> tuple[int | None, int | None]:
    """(num_classes, context_dim) of a built model; None where it takes no such input."""
    return getattr(model, "num_classes", None), getattr(model, "context_dim", None)


def build_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
    d = config.diffusion
    try:
        if d.schedule in ("linear", "scaled_linear"):
            return getattr(schedules, d.schedule)(
                int(d.num_timesteps), beta_start=float(d.beta_start), beta_end=float(d.beta_end)
            )
        return schedules.cosine(int(d.num_timesteps))
    except ValueError as e:
        raise ConfigError(f"config.diffusion: {e}") from None


def build_loss(
    config: ml_collections.ConfigDict, model: nn.Module, schedule: schedules.Schedule
) -> losses.LossFn:
    if config.diffusion.loss == "corruption":
        return losses.make_corruption_loss(model.apply)
    if config.diffusion.loss == "noisy_classifier":
        return losses.make_noisy_classifier_loss(model.apply, schedule)
    num_classes, _ = cond_spec(model)
    if formulations.is_continuous(config):
        return formulations.build_loss(config, model, num_classes)
    return losses.make_denoising_loss(
        model.apply,
        schedule,
        prediction=config.diffusion.prediction,
        cond_drop_prob=float(config.train.cond_drop_prob),
        num_classes=num_classes,
        loss_weighting=config.diffusion.get("loss_weighting", "none"),
    )


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    t = config.train
    try:
        return optim.make_optimizer(
            learning_rate=float(t.learning_rate),
            warmup_steps=int(t.warmup_steps),
            decay_steps=int(t.steps) if t.get("cosine_decay", False) else None,
            weight_decay=float(t.weight_decay),
            grad_clip=float(t.grad_clip),
            ema_decay=float(t.ema_decay),
            ema_start_step=int(t.ema_start_step),
        )
    except ValueError as e:
        raise ConfigError(f"config.train: {e}") from None


def init_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
) -> jd_train.TrainState:
    """A fresh TrainState at step 0 (params from ``key``; the step rng from ``key`` too)."""
    init_key, state_key = jax.random.split(key)
    x = jnp.zeros(image_shape(config, batch=1), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    args = (x,) if isinstance(model, AutoencoderKL) else (x, t, None)  # no t, no cond
    params = jax.jit(model.init)(init_key, *args)["params"]
    return jd_train.create_train_state(params, optimizer, state_key)


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The global mesh over every process's devices; ``mesh.fsdp`` K > 1 adds an 'fsdp' axis
    of size K that params, optimizer state and EMA are sharded over (jaxdiff.train)."""
    fsdp = int(config.get("mesh", {}).get("fsdp", 1))
    try:
        return jd_train.make_mesh(fsdp=fsdp)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def batch_mesh(mesh: jax.sharding.Mesh, batch: int) -> jax.sharding.Mesh | None:
    """``mesh`` when a batch of ``batch`` images splits evenly over its devices (the sampler
    then runs data-parallel), else None (one device)."""
    return mesh if batch % mesh.size == 0 else None
