"""Starting a run from pretrained weights: ``--config.init_from=PATH`` and ``--pretrained``.

``PATH`` is a diffusers folder (a DDPMPipeline folder such as google/ddpm-celebahq-256
saved with ``save_pretrained``, or a bare UNet2DModel folder) or a jaxdiff workdir. The
weights decide the architecture, so ``resolve(config)`` replaces ``config.model`` with the
pretrained UNet (keeping the run's ``dtype`` / ``remat`` / ``dropout`` choices) and, for a
pipeline folder or a workdir, ``config.diffusion``'s schedule and prediction with the ones
the weights were trained for. Fine-tuning options live in ``config.finetune``:

* ``learning_rate``: replaces ``train.learning_rate`` (fine-tuning wants a small one);
* ``frozen``: comma list of parameter-path prefixes kept fixed, e.g.
  ``"down_blocks,mid_block"`` or ``"time_embedding,conv_in"``; their gradients are zeroed
  before the optimizer, so Adam leaves them exactly where they were.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from experiments.runs import builders, restore
from experiments.runtime.errors import ConfigError
from jaxdiff import pretrained
from jaxdiff import train as jd_train

TRAINING_CHOICES = ("dtype", "remat", "dropout")  # kept from the run's own config.model


def is_diffusers_folder(path: pathlib.Path) -> bool:
    return (path / "model_index.json").exists() or (path / pretrained.CONFIG_NAME).exists()


def _check_path(path: str) -> pathlib.Path:
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"pretrained folder {folder} not found; {pretrained.GET_A_PIPELINE}"
        )
    return folder


def pipeline_fields(path: str) -> dict[str, Any]:
    """{'model': ..., 'diffusion': ..., 'data': ..., 'sample': ...} config fields that make
    jaxdiff build the UNet, schedule and sampler options of a diffusers folder."""
    folder = _check_path(path)
    unet_dir = folder / "unet" if (folder / "model_index.json").exists() else folder
    kwargs, in_channels = pretrained.unet_kwargs(
        pretrained.load_json(unet_dir / pretrained.CONFIG_NAME)
    )
    fields: dict[str, Any] = {
        "model": {"name": "unet", **{k: list(v) if isinstance(v, tuple) else v
                                     for k, v in kwargs.items()}},
        "data": {"channels": in_channels},
    }
    sample_size = pretrained.load_json(unet_dir / pretrained.CONFIG_NAME).get("sample_size")
    if sample_size:
        side = sample_size[0] if isinstance(sample_size, list) else sample_size
        fields["sample_size"] = int(side)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if scheduler_file.exists():
        scheduler = pretrained.load_json(scheduler_file)
        kinds = {"linear": "linear", "scaled_linear": "scaled_linear",
                 "squaredcos_cap_v2": "cosine"}
        kind = scheduler.get("beta_schedule", "linear")
        if kind not in kinds or scheduler.get("trained_betas") is not None:
            raise ConfigError(
                f"{scheduler_file}: beta_schedule {kind!r} has no jaxdiff config name"
            )
        settings = pretrained.sampling_settings(scheduler)
        fields["diffusion"] = {
            "schedule": kinds[kind],
            "num_timesteps": int(scheduler.get("num_train_timesteps", 1000)),
            "beta_start": float(scheduler.get("beta_start", 1e-4)),
            "beta_end": float(scheduler.get("beta_end", 0.02)),
            "prediction": settings["prediction"],
        }
        fields["sample"] = {k: settings[k] for k in ("clip_x0", "variance", "spacing")}
    return fields


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with model/diffusion (and the fine-tuning learning rate) taken from
    ``config.init_from``; the config itself when init_from is unset."""
    path = config.get("init_from")
    if not path:
        return config
    folder = _check_path(path)
    if is_diffusers_folder(folder):
        fields = pipeline_fields(path)
    else:
        saved = restore.load_run_config(folder)
        fields = {"model": saved.model.to_dict(), "diffusion": saved.diffusion.to_dict(),
                  "data": {"channels": int(saved.data.channels)}}
    resolved = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    keep = {k: config.model[k] for k in TRAINING_CHOICES if k in config.model}
    resolved.model = {**fields["model"], **keep}
    for section in ("diffusion", "data", "sample"):
        for key, value in fields.get(section, {}).items():
            resolved[section][key] = value
    finetune = config.get("finetune") or {}
    if finetune.get("learning_rate"):
        resolved.train.learning_rate = float(finetune["learning_rate"])
    print(f"init_from {folder}: model and diffusion settings from there", file=sys.stderr)
    return resolved


def frozen_mask(params: Any, frozen: str) -> Any:
    """A params-shaped tree of bools: True where the path starts with a ``frozen`` prefix."""
    prefixes = [p.strip().strip("/") for p in (frozen or "").split(",") if p.strip()]
    flat = traverse_util.flatten_dict(params)
    names = {path: "/".join(path) for path in flat}
    unused = [p for p in prefixes if not any(n == p or n.startswith(p) for n in names.values())]
    if unused:
        top = sorted({path[0] for path in flat})
        raise ConfigError(
            f"finetune.frozen {unused} match no parameter; paths start with {top}"
        )
    return traverse_util.unflatten_dict(
        {path: any(n.startswith(p) for p in prefixes) for path, n in names.items()}
    )


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The run's optimizer, with the gradients of ``finetune.frozen`` zeroed in front
    (its state is the plain optimizer's)."""
    optimizer = builders.build_optimizer(config)
    frozen = (config.get("finetune") or {}).get("frozen", "")
    if not frozen:
        return optimizer
    if float(config.train.weight_decay) > 0:
        raise ConfigError(
            "finetune.frozen needs train.weight_decay=0 (decay would move frozen weights)"
        )

    def update(grads, state, params=None):
        mask = frozen_mask(grads, frozen)
        grads = jax.tree.map(lambda g, m: jnp.zeros_like(g) if m else g, grads, mask)
        return optimizer.update(grads, state, params)

    # Same state as the plain optimizer, so sample/evaluate restore it without knowing.
    return optax.GradientTransformation(optimizer.init, update)


def load_params(config: ml_collections.ConfigDict, model: Any) -> Any:
    """The pretrained params of ``config.init_from`` (a workdir gives its EMA params)."""
    folder = pathlib.Path(config.init_from)
    if is_diffusers_folder(folder):
        loaded_model, params = pretrained.load_diffusers_unet(folder)
        if loaded_model.clone(**{k: getattr(model, k) for k in TRAINING_CHOICES}) != model:
            raise ConfigError(f"{folder}'s UNet differs from config.model")
        return params
    saved = restore.load_run_config(folder)
    return restore.restore_for_sampling(saved, str(folder), model)[1]


def init_state(
    config: ml_collections.ConfigDict,
    model: Any,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
) -> jd_train.TrainState:
    """``builders.init_state``, but from the pretrained params when init_from is set."""
    if not config.get("init_from"):
        return builders.init_state(config, model, optimizer, key)
    _, state_key = jax.random.split(key)
    return jd_train.create_train_state(load_params(config, model), optimizer, state_key)


def pretrained_run(path: str, base: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(config, params) to sample from a diffusers folder with jaxdiff's samplers: ``base``
    (a config's defaults) with the folder's model, schedule and sampler options."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.init_from = str(path)
    config = resolve(config)
    size = pipeline_fields(str(path)).get("sample_size")
    if size:
        config.data.image_size, config.data.resize_to = size, None
    model = builders.build_model(config)
    return config, load_params(config, model)
