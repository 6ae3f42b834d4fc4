"""diffusers ``AutoencoderKL`` folders in and out (``config.json`` +
``diffusion_pytorch_model.safetensors``, no torch), as jaxdiff's ``AutoencoderKL``.

The parameter trees map one to one (``jaxdiff.models.autoencoder``), so the state dict is
converted by the UNet's renaming and transposing (``jaxdiff.pretrained.unet2d``). Config
fields that change the function are honoured or refused by name; ``sample_size`` and
``force_upcast`` (a PyTorch half-precision switch) are bookkeeping.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.layers import ACTIVATIONS
from jaxdiff.pretrained.folders import (
    CONFIG_NAME,
    expected_params,
    load_json,
    read_state_dict,
    write_folder,
)
from jaxdiff.pretrained.unet2d import (
    UnsupportedConfigError,
    params_from_state_dict,
    state_dict_from_params,
)

_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
           "latent_channels", "norm_num_groups", "act_fn", "mid_block_add_attention",
           "use_quant_conv", "use_post_quant_conv", "scaling_factor", "shift_factor")


def autoencoder_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """``AutoencoderKL(**kwargs)`` kwargs of an AutoencoderKL ``config.json`` dict;
    UnsupportedConfigError names a field jaxdiff cannot honour."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise UnsupportedConfigError(f"_class_name {name!r}: only AutoencoderKL folders are read")
    chans = tuple(int(c) for c in config.get("block_out_channels", (64,)))
    for key, block in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(key, [block]))
        if set(types) != {block} or len(types) != len(chans):
            raise UnsupportedConfigError(
                f"AutoencoderKL {key}={types} is not supported (only {block}, one per "
                f"block_out_channels entry)"
            )
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise UnsupportedConfigError(
                f"AutoencoderKL {key} is not supported (per-channel latent statistics); "
                "only scaling_factor and shift_factor"
            )
    if config.get("norm_type", "group") != "group":
        raise UnsupportedConfigError(
            f"AutoencoderKL norm_type={config['norm_type']!r} is not supported (only 'group')"
        )
    act = config.get("act_fn", "silu")
    if act not in ACTIVATIONS:
        raise UnsupportedConfigError(
            f"AutoencoderKL act_fn={act!r} is not supported ({sorted(ACTIVATIONS)})"
        )
    defaults = AutoencoderKL()
    kwargs = {k: config.get(k, getattr(defaults, k)) for k in _FIELDS}
    kwargs["block_out_channels"] = chans
    return kwargs


def diffusers_autoencoder_config(model: AutoencoderKL, *, sample_size: int | None = None) -> dict:
    """The ``config.json`` dict of ``model`` as a diffusers AutoencoderKL."""
    config = {"_class_name": "AutoencoderKL", **{k: getattr(model, k) for k in _FIELDS}}
    n = len(model.block_out_channels)
    config.update(block_out_channels=list(model.block_out_channels),
                  down_block_types=["DownEncoderBlock2D"] * n,
                  up_block_types=["UpDecoderBlock2D"] * n)
    if sample_size is not None:
        config["sample_size"] = int(sample_size)
    return config


def _vae_dir(path: pathlib.Path) -> pathlib.Path:
    """An AutoencoderKL folder itself, or the ``vae/`` of a pipeline folder."""
    return path / "vae" if (path / "model_index.json").exists() else path


def load_diffusers_autoencoder(path: str | pathlib.Path) -> tuple[AutoencoderKL, dict]:
    """(model, params) from an AutoencoderKL folder (or a pipeline folder's ``vae/``).

    ``model.apply({"params": params}, x, method="encode")`` gives the posterior's (mean,
    logvar) of ``AutoencoderKL.encode(x).latent_dist`` and ``method="decode"`` its
    ``decode(z).sample``, in NHWC.
    """
    folder = _vae_dir(pathlib.Path(path))
    model = AutoencoderKL(**autoencoder_kwargs(load_json(folder / CONFIG_NAME)))
    size = model.downsample_factor
    x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
    params = params_from_state_dict(read_state_dict(folder, "AutoencoderKL"),
                                    expected=expected_params(model, x))
    return model, params


def save_diffusers_autoencoder(
    model: AutoencoderKL, params: Any, path: str | pathlib.Path, *,
    sample_size: int | None = None,
) -> pathlib.Path:
    """Writes ``params`` of ``model`` as an AutoencoderKL folder that
    ``AutoencoderKL.from_pretrained(path)`` loads with the same outputs. Returns the folder."""
    if not isinstance(model, AutoencoderKL):
        raise ValueError(f"only jaxdiff's AutoencoderKL has a diffusers twin, got "
                         f"{type(model).__name__}")
    config = diffusers_autoencoder_config(model, sample_size=sample_size)
    return write_folder(pathlib.Path(path), config, state_dict_from_params(params))
