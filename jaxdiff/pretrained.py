"""diffusers ``UNet2DModel`` and pipeline folders in and out, with safetensors (no torch).

A diffusers UNet folder holds ``config.json`` (the ``UNet2DModel(**config)`` arguments)
and ``diffusion_pytorch_model.safetensors`` (the PyTorch state dict); a pipeline folder
(``DDPMPipeline.save_pretrained``, the ``google/ddpm-*`` repositories) holds
``model_index.json``, ``unet/`` and ``scheduler/scheduler_config.json``. jaxdiff's
``UNet`` has UNet2DModel's parameter tree (table in ``jaxdiff.models.unet``), so the
conversion is renaming and transposing:

* ``a.0.b.weight`` <-> ``a_0/b/kernel``: conv (O, I, kh, kw) <-> (kh, kw, I, O), linear
  (O, I) <-> (I, O); GroupNorm ``weight`` <-> ``scale``; ``class_embedding.weight`` <->
  ``class_embedding/embedding``.
* Old attention names (diffusers < 0.14, e.g. the released google/ddpm-* weights):
  ``query/key/value/proj_attn`` read as ``to_q/to_k/to_v/to_out.0``.
* A diffusers class table of K rows has no null label for classifier-free guidance: it
  becomes ``num_classes=K`` with a zero row K appended as the null label (adding no class
  embedding), so class K-1 stays a class. ``save_diffusers_unet`` writes all
  ``num_classes + 1`` rows and marks the last one null in ``config.json``
  (``_jaxdiff_null_label``, ignored by diffusers), so a round trip is exact.

``load_diffusers_unet(path) -> (model, params)``; ``save_diffusers_unet(model, params,
path)``; ``load_diffusers_pipeline(path) -> Pretrained`` (model, params, schedule,
prediction, sampler options).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff import schedules
from jaxdiff.models.layers import ACTIVATIONS
from jaxdiff.models.unet import UNet, diffusers_kwargs

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
NULL_LABEL_KEY = "_jaxdiff_null_label"
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Flax module names that are a diffusers ModuleList entry ("resnets_0" <-> "resnets.0").
_LIST_NAME = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers"
                        r"|to_out)_(\d+)$")
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "posterior", "fixed_large": "beta"}
GET_A_PIPELINE = (
    "on a machine with network access run: python -c \"from diffusers import DDPMPipeline; "
    "DDPMPipeline.from_pretrained('google/ddpm-celebahq-256')"
    ".save_pretrained('ddpm-celebahq-256')\""
    " (or: huggingface-cli download google/ddpm-celebahq-256 --local-dir ddpm-celebahq-256), "
    "then copy the folder here"
)


class UnsupportedConfigError(ValueError):
    """A diffusers config asks for something jaxdiff's UNet does not compute."""


# --------------------------------------------------------------------------- config


def unet_kwargs(config: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(``UNet(**kwargs)`` kwargs, in_channels) for a UNet2DModel ``config.json`` dict.

    Every field that changes the function is honoured or refused by name
    (UnsupportedConfigError); ``sample_size`` and bookkeeping fields are ignored.
    """
    get = lambda key, default=None: config.get(key, default)  # noqa: E731
    name = get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise UnsupportedConfigError(f"_class_name {name!r}: only UNet2DModel folders are read")
    refused = {
        "time_embedding_type": ("positional",),
        "mid_block_type": ("UNetMidBlock2D",),
        "downsample_type": ("conv",),
        "upsample_type": ("conv",),
        "class_embed_type": (None,),
    }
    for key, allowed in refused.items():
        value = get(key, allowed[0])
        if value not in allowed:
            raise UnsupportedConfigError(
                f"UNet2DModel {key}={value!r} is not supported (only {allowed[0]!r})"
            )
    if get("norm_num_groups", 32) is None:
        raise UnsupportedConfigError("UNet2DModel norm_num_groups=None is not supported")
    down = list(get("down_block_types", ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                          "AttnDownBlock2D")))
    up = list(get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                      "UpBlock2D")))
    downs = {"DownBlock2D": False, "AttnDownBlock2D": True}
    ups = {"UpBlock2D": False, "AttnUpBlock2D": True}
    for kind, types, known in (("down", down, downs), ("up", up, ups)):
        bad = sorted(set(types) - set(known))
        if bad:
            raise UnsupportedConfigError(
                f"UNet2DModel {kind}_block_types {bad} are not supported (only {sorted(known)})"
            )
    attention = [downs[b] for b in down]
    if [ups[b] for b in up] != attention[::-1]:
        raise UnsupportedConfigError(
            f"up_block_types {up} do not mirror down_block_types {down}; jaxdiff's UNet puts "
            "attention at the same levels on both paths"
        )
    chans = tuple(int(c) for c in get("block_out_channels", (224, 448, 672, 896)))
    if len(chans) != len(down):
        raise UnsupportedConfigError(
            f"block_out_channels {chans} and down_block_types {down} differ in length"
        )
    num_class_embeds = get("num_class_embeds")
    num_classes = None
    if num_class_embeds is not None:
        num_classes = int(num_class_embeds) - (1 if get(NULL_LABEL_KEY, False) else 0)
    in_channels = int(get("in_channels", 3))
    out_channels = int(get("out_channels", 3))
    head_dim = get("attention_head_dim", 8)
    kwargs = dict(
        block_out_channels=chans,
        layers_per_block=int(get("layers_per_block", 2)),
        attention_levels=tuple(i for i, a in enumerate(attention) if a),
        mid_attention=bool(get("add_attention", True)),
        attention_head_dim=None if head_dim is None else int(head_dim),
        norm_num_groups=int(get("norm_num_groups", 32)),
        norm_eps=float(get("norm_eps", 1e-5)),
        dropout=float(get("dropout", 0.0)),
        time_embedding_dim=get("time_embedding_dim"),
        flip_sin_to_cos=bool(get("flip_sin_to_cos", True)),
        freq_shift=float(get("freq_shift", 0)),
        num_classes=num_classes,
        out_channels=None if out_channels == in_channels else out_channels,
        downsample_padding=int(get("downsample_padding", 1)),
        resnet_time_scale_shift=str(get("resnet_time_scale_shift", "default")),
        act_fn=str(get("act_fn", "silu")),
        mid_block_scale_factor=float(get("mid_block_scale_factor", 1)),
        attn_norm_num_groups=get("attn_norm_num_groups"),
        center_input_sample=bool(get("center_input_sample", False)),
    )
    if kwargs["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise UnsupportedConfigError(
            f"UNet2DModel resnet_time_scale_shift={kwargs['resnet_time_scale_shift']!r} is not "
            "supported (only 'default' and 'scale_shift')"
        )
    if kwargs["act_fn"] not in ACTIVATIONS:
        raise UnsupportedConfigError(
            f"UNet2DModel act_fn={kwargs['act_fn']!r} is not supported ({sorted(ACTIVATIONS)})"
        )
    return kwargs, in_channels


def diffusers_config(model: UNet, *, in_channels: int, sample_size: int | None = None) -> dict:
    """The ``config.json`` dict of ``model`` as a UNet2DModel."""
    config = {"_class_name": "UNet2DModel", **diffusers_kwargs(
        model, in_channels=in_channels, sample_size=sample_size
    )}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if model.num_classes is not None:
        config[NULL_LABEL_KEY] = True
    return config


# --------------------------------------------------------------------------- weights


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], *, expected: Any, add_null_row: bool = False
) -> dict:
    """A UNet2DModel state dict (name -> numpy array) -> the Flax params tree.

    ``expected``: the tree of shapes to fill (e.g. ``jax.eval_shape`` of ``model.init``);
    missing, unexpected or misshapen entries raise ValueError naming them.
    ``add_null_row`` appends a zero row to the class table (see the module docstring).
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        *mods, leaf = key.split(".")
        mods = [OLD_ATTENTION_NAMES.get(m, m) for m in mods]
        path: list[str] = []
        for m in ".".join(mods).split("."):  # "to_out.0" from the renaming splits too
            if m.isdigit():
                path[-1] += f"_{m}"
            else:
                path.append(m)
        value = np.asarray(value, np.float32)
        if leaf == "weight" and path[-1] == "class_embedding":
            leaf = "embedding"
            if add_null_row:
                value = np.concatenate([value, np.zeros_like(value[:1])])
        elif leaf == "weight" and value.ndim == 4:
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            leaf, value = "kernel", value.T
        elif leaf == "weight":
            leaf = "scale"
        flat[(*path, leaf)] = value
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    unexpected = sorted("/".join(k) for k in set(flat) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"the weights do not fit the config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{'/'.join(k)} {flat[k].shape} != {s}" for k, s in want.items() if flat[k].shape != s]
    if wrong:
        raise ValueError(f"weights of the wrong shape: {wrong[:5]}")
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def state_dict_from_params(params: Any) -> dict[str, np.ndarray]:
    """The Flax params tree -> a UNet2DModel state dict (the inverse of the above)."""
    state: dict[str, np.ndarray] = {}
    for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
        *mods, leaf = path
        names = []
        for m in mods:
            match = _LIST_NAME.match(m)
            names.append(f"{match.group(1)}.{match.group(2)}" if match else m)
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        state[".".join(names) + "." + ("bias" if leaf == "bias" else "weight")] = (
            np.ascontiguousarray(value)
        )
    return state


# --------------------------------------------------------------------------- folders


def load_json(path: pathlib.Path) -> dict:
    """A JSON file of a diffusers folder; FileNotFoundError says how to get a folder."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; {GET_A_PIPELINE}")
    return json.loads(path.read_text())


def _unet_dir(path: pathlib.Path) -> pathlib.Path:
    """A UNet folder itself, or the ``unet/`` of a pipeline folder."""
    return path / "unet" if (path / "model_index.json").exists() else path


def load_diffusers_unet(path: str | pathlib.Path) -> tuple[UNet, dict]:
    """(model, params) from a UNet2DModel folder (or a pipeline folder's ``unet/``).

    ``model.apply({"params": params}, x, t)`` (plus int labels when the config has
    ``num_class_embeds``) gives UNet2DModel's ``sample`` for the same input, in NHWC.
    """
    from safetensors.numpy import load_file

    folder = _unet_dir(pathlib.Path(path))
    config = load_json(folder / CONFIG_NAME)
    kwargs, in_channels = unet_kwargs(config)
    model = UNet(**kwargs)
    candidates = [folder / WEIGHTS_NAME, folder / WEIGHTS_NAME.replace(".safe", ".fp16.safe")]
    weights = next((p for p in candidates if p.exists()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME}; jaxdiff reads safetensors only (re-save a "
            "PyTorch .bin folder with UNet2DModel.from_pretrained(dir).save_pretrained(dir))"
        )
    size = 2 ** (len(model.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    expected = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
    params = params_from_state_dict(
        load_file(str(weights)), expected=expected,
        add_null_row=model.num_classes is not None and not config.get(NULL_LABEL_KEY, False),
    )
    return model, params


def save_diffusers_unet(
    model: UNet, params: Any, path: str | pathlib.Path, *, sample_size: int | None = None
) -> pathlib.Path:
    """Writes ``params`` of ``model`` as a UNet2DModel folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) that ``UNet2DModel.from_pretrained(path)`` loads
    and that gives the same outputs. Returns the folder."""
    from safetensors.numpy import save_file

    if not isinstance(model, UNet):
        raise ValueError(f"only jaxdiff's UNet has a UNet2DModel twin, got {type(model).__name__}")
    in_channels = int(params["conv_in"]["kernel"].shape[2])
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = diffusers_config(model, in_channels=in_channels, sample_size=sample_size)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state_dict_from_params(params), str(folder / WEIGHTS_NAME), {"format": "pt"})
    return folder


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


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A pipeline folder read into jaxdiff terms.

    model, params: the UNet and its parameters. schedule: the forward process.
    prediction: "eps" | "x0" | "v". clip_sample: clip x0 to [-1, 1] while sampling.
    variance: DDPM's sampling variance, "posterior" (beta tilde, fixed_small) or "beta"
    (fixed_large). image_size, channels: the images the UNet was trained on.
    scheduler_config: the raw scheduler config.
    """

    model: UNet
    params: dict
    schedule: schedules.Schedule
    prediction: str
    clip_sample: bool
    variance: str
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
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise UnsupportedConfigError(
            f"prediction_type {kind!r} is not one of {sorted(PREDICTIONS)}"
        )
    variance = scheduler.get("variance_type", "fixed_small")
    if variance not in VARIANCES:
        raise UnsupportedConfigError(
            f"variance_type {variance!r} is not supported ({sorted(VARIANCES)}); learned "
            "variances need a model with 2C outputs"
        )
    if scheduler.get("thresholding", False):
        raise UnsupportedConfigError("scheduler thresholding=True is not supported")
    sample_size = unet_config.get("sample_size")
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    return Pretrained(
        model=model,
        params=params,
        schedule=schedule_from_scheduler_config(scheduler),
        prediction=PREDICTIONS[kind],
        clip_sample=bool(scheduler.get("clip_sample", True)),
        variance=VARIANCES[variance],
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
