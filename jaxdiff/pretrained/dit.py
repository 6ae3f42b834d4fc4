"""diffusers ``DiTTransformer2DModel`` folders in and out, as jaxdiff's ``DiT``.

diffusers keeps the DiT of Peebles & Xie 2023 under Transformer2DModel's names, and gives
every block its own copy of the timestep and class embedders (``norm1.emb``); the
published checkpoints (``facebook/DiT-XL-2-256``, converted from the paper's code, which has
one embedder) hold the same numbers in every block. jaxdiff's DiT has the paper's single
embedder, so a folder whose blocks' embedders differ is refused, and a saved folder copies
them into every block. The names:

=============================================================  =============================
``pos_embed.proj``                                              ``x_embedder`` (conv)
``transformer_blocks.0.norm1.emb.timestep_embedder.linear_1/2``  ``t_mlp_0`` / ``t_mlp_1``
``transformer_blocks.0.norm1.emb.class_embedder.embedding_table``  ``y_embedder`` (null last)
``transformer_blocks.i.norm1.linear``                           ``blocks_i/adaLN_modulation``
``transformer_blocks.i.attn1.to_q / to_k / to_v``               ``blocks_i/qkv`` (concatenated)
``transformer_blocks.i.attn1.to_out.0``                         ``blocks_i/proj``
``transformer_blocks.i.ff.net.0.proj`` / ``ff.net.2``           ``blocks_i/fc1`` / ``fc2``
``proj_out_1`` / ``proj_out_2``                        ``final_adaLN_modulation`` / ``final_linear``
=============================================================  =============================

Both unpatchify a token's p*p*C outputs in (row, column, channel) order, so the output
layouts agree; with 2C outputs (``learn_sigma``) the variance half is last in both.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff.models.dit import DiT
from jaxdiff.pretrained.folders import (
    CONFIG_NAME,
    expected_params,
    load_json,
    read_state_dict,
    write_folder,
)
from jaxdiff.pretrained.unet2d import UnsupportedConfigError

_EMBEDDERS = {  # the shared embedders: diffusers' name under norm1.emb -> jaxdiff's module
    "timestep_embedder.linear_1": "t_mlp_0",
    "timestep_embedder.linear_2": "t_mlp_1",
    "class_embedder.embedding_table": "y_embedder",
}
_BLOCK = {"norm1.linear": "adaLN_modulation", "attn1.to_out.0": "proj", "ff.net.0.proj": "fc1",
          "ff.net.2": "fc2"}
_TOP = {"pos_embed.proj": "x_embedder", "proj_out_1": "final_adaLN_modulation",
        "proj_out_2": "final_linear"}
_QKV = ("attn1.to_q", "attn1.to_k", "attn1.to_v")


def dit_kwargs(config: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(``DiT(**kwargs)`` kwargs, in_channels) of a DiTTransformer2DModel ``config.json``;
    UnsupportedConfigError names a field jaxdiff's DiT cannot honour."""
    get = config.get
    name = get("_class_name", "DiTTransformer2DModel")
    if name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise UnsupportedConfigError(
            f"_class_name {name!r}: only DiTTransformer2DModel folders are read")
    fixed = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate",
             "attention_bias": True, "norm_elementwise_affine": False}
    for key, value in fixed.items():
        if get(key, value) != value:
            raise UnsupportedConfigError(
                f"DiTTransformer2DModel {key}={get(key)!r} is not supported (only {value!r})")
    for key in ("cross_attention_dim", "caption_channels", "num_vector_embeds"):
        if get(key) is not None:
            raise UnsupportedConfigError(f"DiTTransformer2DModel {key} is not supported")
    in_channels = int(get("in_channels", 4))
    out_channels = int(get("out_channels") or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise UnsupportedConfigError(
            f"DiTTransformer2DModel out_channels={out_channels} is not supported (in_channels "
            f"{in_channels}, or twice that for a learned variance)")
    heads, head_dim = int(get("num_attention_heads", 16)), int(get("attention_head_dim", 72))
    num_classes = get("num_embeds_ada_norm", 1000)
    kwargs = dict(
        patch_size=int(get("patch_size", 2)), hidden_size=heads * head_dim,
        depth=int(get("num_layers", 28)), num_heads=heads,
        num_classes=None if num_classes is None else int(num_classes),
        learn_sigma=out_channels == 2 * in_channels, freq_shift=1.0,
        mlp_norm_eps=float(get("norm_eps", 1e-5)),
    )
    return kwargs, in_channels


def diffusers_dit_config(model: DiT, *, in_channels: int, sample_size: int) -> dict:
    """The ``config.json`` of ``model`` as a DiTTransformer2DModel (which needs
    ``freq_shift=1``, ``mlp_ratio=4`` and labels)."""
    if model.freq_shift != 1 or model.mlp_ratio != 4 or model.num_classes is None or (
            model.context_dim is not None or model.out_channels is not None):
        raise ValueError("DiTTransformer2DModel computes a DiT with freq_shift=1, mlp_ratio=4, "
                         "class labels, no context and out_channels=None")
    return {
        "_class_name": "DiTTransformer2DModel", "num_attention_heads": model.num_heads,
        "attention_head_dim": model.hidden_size // model.num_heads, "in_channels": in_channels,
        "out_channels": in_channels * (2 if model.learn_sigma else 1),
        "num_layers": model.depth, "sample_size": int(sample_size),
        "patch_size": model.patch_size, "num_embeds_ada_norm": model.num_classes,
        "norm_eps": model.mlp_norm_eps, "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate", "attention_bias": True,
        "norm_elementwise_affine": False,
    }


def _linear(state: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    weight = np.asarray(state[f"{name}.weight"], np.float32)
    kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
    return {"kernel": kernel, "bias": np.asarray(state[f"{name}.bias"], np.float32)}


def params_from_dit_state_dict(state: Mapping[str, np.ndarray], *, depth: int) -> dict:
    """A DiTTransformer2DModel state dict -> jaxdiff DiT params (see the module table)."""
    state = dict(state)
    params: dict[str, Any] = {new: _linear(state, old) for old, new in _TOP.items()}
    emb0 = "transformer_blocks.0.norm1.emb."
    for old, new in _EMBEDDERS.items():
        if new == "y_embedder":
            params[new] = {"embedding": np.asarray(state[emb0 + old + ".weight"], np.float32)}
        else:
            params[new] = _linear(state, emb0 + old)
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        for key in [k for k in state if k.startswith(block + "norm1.emb.")]:
            if not np.array_equal(state[key], state[key.replace(block, "transformer_blocks.0.")]):
                raise UnsupportedConfigError(
                    f"{key} differs from block 0's: jaxdiff's DiT has one timestep/class "
                    "embedder (as the paper and the published checkpoints)")
        qkv = [_linear(state, block + n) for n in _QKV]
        params[f"blocks_{i}"] = {
            **{new: _linear(state, block + old) for old, new in _BLOCK.items()},
            "qkv": {k: np.concatenate([q[k] for q in qkv], axis=-1) for k in ("kernel", "bias")},
        }
    return params


def dit_state_dict_from_params(params: Any, *, depth: int) -> dict[str, np.ndarray]:
    """jaxdiff DiT params -> a DiTTransformer2DModel state dict (embedders in every block)."""
    p = jax.device_get(params)
    state: dict[str, np.ndarray] = {}

    def put(name, leaf):
        if "embedding" in leaf:
            state[f"{name}.weight"] = np.asarray(leaf["embedding"], np.float32)
            return
        kernel = np.asarray(leaf["kernel"], np.float32)
        state[f"{name}.weight"] = np.ascontiguousarray(
            kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T)
        state[f"{name}.bias"] = np.asarray(leaf["bias"], np.float32)

    for old, new in _TOP.items():
        put(old, p[new])
    for i in range(depth):
        block = f"transformer_blocks.{i}."
        for old, new in _EMBEDDERS.items():
            put(block + "norm1.emb." + old, p[new])
        for old, new in _BLOCK.items():
            put(block + old, p[f"blocks_{i}"][new])
        qkv = p[f"blocks_{i}"]["qkv"]
        for j, name in enumerate(_QKV):
            put(block + name, {k: np.split(np.asarray(v), 3, axis=-1)[j] for k, v in qkv.items()})
    return state


def load_diffusers_dit(path: str | pathlib.Path) -> tuple[DiT, dict]:
    """(model, params) from a DiTTransformer2DModel folder (or a DiTPipeline's
    ``transformer/``). ``model.apply({"params": params}, x, t, labels)`` on NHWC latents gives
    the model's ``sample`` in NHWC, the learned-variance half last."""
    folder = pathlib.Path(path)
    if (folder / "model_index.json").exists():
        folder = folder / "transformer"
    kwargs, in_channels = dit_kwargs(load_json(folder / CONFIG_NAME))
    model = DiT(**kwargs)
    params = params_from_dit_state_dict(read_state_dict(folder, "DiTTransformer2DModel"),
                                        depth=model.depth)
    size = model.patch_size
    x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    want = {k: v.shape for k, v in traverse_util.flatten_dict(
        expected_params(model, x, t)).items()}
    got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
    if want != got:
        wrong = sorted("/".join(k) for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise ValueError(f"the weights do not fit the config: {wrong[:5]}")
    return model, jax.tree.map(jnp.asarray, params)


def save_diffusers_dit(model: DiT, params: Any, path: str | pathlib.Path, *, in_channels: int,
                       sample_size: int) -> pathlib.Path:
    """Writes a DiTTransformer2DModel folder that ``DiTTransformer2DModel.from_pretrained``
    loads with the same outputs. Returns the folder."""
    config = diffusers_dit_config(model, in_channels=in_channels, sample_size=sample_size)
    state = dit_state_dict_from_params(params, depth=model.depth)
    return write_folder(pathlib.Path(path), config, state)
