"""From a config to the objects of a run, shared by experiments/train.py and sample.py.

Every user mistake found here raises ``ConfigError`` (a ValueError) with a one-line message
that names the config field and how to fix it; the CLIs print it as ``error: ...`` and exit 2
instead of showing a traceback (``exit_on_user_error``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import checkpoint, losses, models, optim, schedules, xla_options
from jaxdiff import train as jd_train

SCHEDULES = ("linear", "cosine", "scaled_linear")
LOSSES = ("denoising", "corruption", "noisy_classifier")
SAMPLERS = ("ddpm", "ddpm_no_noise", "ddim", "dpm_solver_pp", "corruption")
STRIDED = ("ddim", "dpm_solver_pp")  # samplers that take num_steps <= T and a grid spacing


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message says which and why."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turns the errors a user can fix (bad config, missing files, a workdir that does not
    fit the config) into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except (ValueError, OSError) as e:
        # ValueError covers ConfigError and CheckpointMismatchError; the library raises
        # ValueError/FileNotFoundError only for inputs the user chose (CONTRACTS.md). OSError
        # also covers a config file that fails to load (config_flags loads it lazily).
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str], flag_values: Any = None) -> list[str]:
    """absl's flag parser for ``app.run(main, flags_parser=parse_flags)``, with one-line
    errors: an unknown config field (``--config.train.stepz=3``), a value of the wrong type
    (``--config.train.steps=abc``) or a config file that does not load exit with status 2."""
    from absl import flags

    from experiments import user_input

    flag_values = flag_values or flags.FLAGS
    try:
        return flag_values(argv)
    except flags.UnrecognizedFlagError as e:  # --config.<section>.<field> with no such section
        unknown = re.search(r"flag '(config\.[\w.]+)'", str(e))
        if unknown is None:
            message = str(e)
        else:
            config = user_input.config_of(flag_values, argv)
            message = user_input.field_hint(config, unknown.group(1))
    except flags.Error as e:  # wrong type or unknown flag: absl's message is already clear
        message = str(e)
    except (AttributeError, KeyError) as e:  # an override names a field the config lacks
        # ConfigDict says e.g. '\'stepz\'\nDid you mean "steps" instead of "stepz"?'
        text = str(e)
        guess = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
        field = guess.group(2) if guess else re.search(r"\w+", text).group(0)
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        named = [a for a in overrides if field in a.split(".")] or overrides or ["--config"]
        message = user_input.field_hint(user_input.config_of(flag_values, argv), named[0])
    except OSError as e:  # config file missing or raising on import
        message = " ".join(str(e).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
    from experiments import classifier_setup

    classifier_setup.validate(config)
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
    if spacing is not None and spacing not in ("linspace", "trailing"):
        raise ConfigError(f"sample.spacing must be 'linspace' or 'trailing', got {spacing!r}")
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


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax module of ``config.model``, checked against the data's image shape."""
    from experiments import classifier_setup

    if classifier_setup.is_classifier(config):
        return classifier_setup.build_model(config)
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
    params = jax.jit(model.init)(init_key, x, t, None)["params"]
    return jd_train.create_train_state(params, optimizer, state_key)


def start_cli(argv: list[str]) -> None:
    """What every CLI's ``main`` does first: reject stray arguments and quiet library logs
    (orbax and jax log every checkpoint save at INFO; ``--verbosity=0`` brings them back)."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def _no_checkpoint(workdir) -> FileNotFoundError:
    return FileNotFoundError(
        f"no complete checkpoint in {checkpoint.checkpoint_dir(workdir)}; train first with "
        f"python -m experiments.train --config <config> --workdir {workdir}"
    )


def load_run_config(workdir) -> ml_collections.ConfigDict:
    """The config saved with the newest complete checkpoint in ``workdir``."""
    from experiments import user_input

    user_input.check_workdir(workdir)
    manager = checkpoint.make_manager(workdir, read_only=True)
    if manager.latest_step() is None:
        raise _no_checkpoint(workdir)
    return ml_collections.ConfigDict(checkpoint.saved_config(manager))


def restore_for_sampling(config: ml_collections.ConfigDict, workdir: str, model: nn.Module):
    """(params, ema_params, step) of the newest complete checkpoint in ``workdir``."""
    optimizer = build_optimizer(config)
    abstract = jax.eval_shape(lambda: init_state(config, model, optimizer, jax.random.key(0)))
    manager = checkpoint.make_manager(workdir, read_only=True)
    restored = checkpoint.restore(manager, state=abstract, config=config)
    if restored is None:
        raise _no_checkpoint(workdir)
    state, step = restored
    return state.params, optim.ema_params(state.opt_state), step


def grid_conds(model: nn.Module, *, per_row: int) -> tuple[Any, int]:
    """(cond, num_rows) for a preview grid with one row per class / one-hot context.

    Int labels (B,) for a model with num_classes (ContextUnet one-hot encodes them: the
    sprites' 5 categories); one-hot float contexts (B, D) for a model with only a context;
    None (rows of ``per_row``) for an unconditional model.
    """
    num_classes, context_dim = cond_spec(model)
    if num_classes:
        return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_row), num_classes
    if context_dim:
        return jnp.repeat(jnp.eye(context_dim, dtype=jnp.float32), per_row, axis=0), context_dim
    return None, 0


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
) -> Callable[..., tuple[jax.Array, jax.Array | None]]:
    """``sample(params, key, cond, classifier_params=None) -> (images (B,H,W,C) in [-1,1],
    trajectory)``, jitted.

    ``spacing`` ("linspace" | "trailing", ``samplers.timestep_grid``) is the timestep grid of
    ddim and dpm_solver_pp; None keeps each sampler's default.

    params and cond are arguments, not constants baked into the program, so one compile
    serves every checkpoint (the train loop's previews) and every label set. With
    ``classifier_apply(classifier_params, x_t, t) -> logits`` and ``classifier_scale`` > 0,
    classifier guidance toward the int labels ``cond`` wraps the (CFG-guided) denoiser; an
    unconditional model is then called without the labels.
    """
    from jaxdiff import guidance, samplers

    num_classes, _ = cond_spec(model)
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

        if guidance_scale > 0:
            denoise_fn = guidance.cfg(
                denoise_fn, guidance_scale=guidance_scale, num_classes=num_classes
            )
        if guided_by_classifier:
            denoise_fn = guidance.classifier_guidance(
                denoise_fn, functools.partial(classifier_apply, classifier_params), schedule,
                scale=classifier_scale, prediction=prediction,
            )
        images, trajectory = sample_fn(denoise_fn, schedule, key, shape, cond=cond, **options)
        return jnp.clip(images, -1.0, 1.0), trajectory

    return xla_options.jit(run)


def grid_columns(num_images: int, rows: int) -> int:
    return num_images // rows if rows else math.ceil(math.sqrt(num_images))


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The global mesh over every process's devices; ``mesh.fsdp`` K > 1 adds an 'fsdp' axis
    of size K that params, optimizer state and EMA are sharded over (jaxdiff.train)."""
    fsdp = int(config.get("mesh", {}).get("fsdp", 1))
    try:
        return jd_train.make_mesh(fsdp=fsdp)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def build_data(config: ml_collections.ConfigDict, *, start_batch: int = 0) -> Any:
    """The checkpointable grain iterator of training batches described by ``config.data``.

    Images are resized to ``data.resize_to`` and zero-padded to ``data.image_size`` when
    ``resize_to`` is set (digits: 8 -> 12 -> 16, a black border like MNIST's), else resized
    to ``data.image_size``. The first batch is global batch ``start_batch`` (a resumed run's
    step).
    """
    from jaxdiff import data, sources

    d = config.data
    source = sources.make_source(d)
    sources.check_labels(source, num_classes=config.model.get("num_classes"))
    channels = np.asarray(source[0]["image"]).shape[-1] if np.ndim(source[0]["image"]) == 3 else 1
    if channels != int(d.channels):
        raise ConfigError(
            f"data.channels={d.channels} but the {d.source} data have {channels} channels; "
            f"set --config.data.channels={channels}"
        )
    resize_to = d.get("resize_to")
    return data.make_pipeline(
        source,
        batch_size=int(d.batch_size),
        seed=int(config.train.seed),
        image_size=int(resize_to or d.image_size),
        pad_to=int(d.image_size) if resize_to else None,
        worker_count=int(d.get("worker_count", 0)),
        start_batch=start_batch,
    )
