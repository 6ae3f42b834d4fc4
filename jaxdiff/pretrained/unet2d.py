"""UNet2DModel <-> jaxdiff's ``UNet``: the ``config.json`` fields as ``UNet`` arguments and
back, and the PyTorch state dict as the Flax parameter tree and back (renaming and
transposing, the table in ``jaxdiff.models.unet``).

* ``a.0.b.weight`` <-> ``a_0/b/kernel``: conv (O, I, kh, kw) <-> (kh, kw, I, O), linear
  (O, I) <-> (I, O); GroupNorm ``weight`` <-> ``scale``; ``class_embedding.weight`` <->
  ``class_embedding/embedding``.
* Old attention names (diffusers < 0.14, e.g. the released google/ddpm-* weights):
  ``query/key/value/proj_attn`` read as ``to_q/to_k/to_v/to_out.0``.
* A diffusers class table of K rows has no null label for classifier-free guidance: it
  becomes ``num_classes=K`` with a zero row K appended as the null label (adding no class
  embedding), so class K-1 stays a class. A saved config marks the last of the
  ``num_classes + 1`` rows null (``_jaxdiff_null_label``, ignored by diffusers), so a round
  trip is exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff.models.layers import ACTIVATIONS
from jaxdiff.models.unet import UNet, diffusers_kwargs

NULL_LABEL_KEY = "_jaxdiff_null_label"
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Flax module names that are a diffusers ModuleList entry ("resnets_0" <-> "resnets.0").
_LIST_NAME = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|downsamplers|upsamplers"
                        r"|to_out)_(\d+)$")


class UnsupportedConfigError(ValueError):
    """A diffusers config asks for something jaxdiff's UNet does not compute."""


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
