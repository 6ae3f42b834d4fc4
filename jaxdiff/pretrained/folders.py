"""diffusers UNet folders in and out: ``config.json`` (the ``UNet2DModel(**config)``
arguments) and ``diffusion_pytorch_model.safetensors`` (the PyTorch state dict), read and
written with safetensors (no torch)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.models.unet import UNet
from jaxdiff.pretrained.unet2d import (
    NULL_LABEL_KEY,
    diffusers_config,
    params_from_state_dict,
    state_dict_from_params,
    unet_kwargs,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
GET_A_PIPELINE = (
    "on a machine with network access run: python -c \"from diffusers import DDPMPipeline; "
    "DDPMPipeline.from_pretrained('google/ddpm-celebahq-256')"
    ".save_pretrained('ddpm-celebahq-256')\""
    " (or: huggingface-cli download google/ddpm-celebahq-256 --local-dir ddpm-celebahq-256), "
    "then copy the folder here"
)


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
    folder = _unet_dir(pathlib.Path(path))
    config = load_json(folder / CONFIG_NAME)
    kwargs, in_channels = unet_kwargs(config)
    model = UNet(**kwargs)
    size = 2 ** (len(model.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = params_from_state_dict(
        read_state_dict(folder, "UNet2DModel"), expected=expected_params(model, x, t),
        add_null_row=model.num_classes is not None and not config.get(NULL_LABEL_KEY, False),
    )
    return model, params


def read_state_dict(folder: pathlib.Path, class_name: str) -> dict:
    """The PyTorch state dict (name -> numpy array) of a diffusers model folder, read with
    safetensors; FileNotFoundError says how to re-save a ``.bin`` folder."""
    from safetensors.numpy import load_file

    candidates = [folder / WEIGHTS_NAME, folder / WEIGHTS_NAME.replace(".safe", ".fp16.safe")]
    weights = next((p for p in candidates if p.exists()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME}; jaxdiff reads safetensors only (re-save a "
            f"PyTorch .bin folder with {class_name}.from_pretrained(dir).save_pretrained(dir))"
        )
    return load_file(str(weights))


def expected_params(model: Any, *args: jax.ShapeDtypeStruct) -> Any:
    """The shapes of ``model.init(key, *args)["params"]``, without computing anything."""
    return jax.eval_shape(model.init, jax.random.key(0), *args)["params"]


def write_folder(folder: pathlib.Path, config: dict, state_dict: dict) -> pathlib.Path:
    """Writes a diffusers model folder: ``config.json`` and the safetensors state dict."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state_dict, str(folder / WEIGHTS_NAME), {"format": "pt"})
    return folder


def save_diffusers_unet(
    model: UNet, params: Any, path: str | pathlib.Path, *, sample_size: int | None = None
) -> pathlib.Path:
    """Writes ``params`` of ``model`` as a UNet2DModel folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) that ``UNet2DModel.from_pretrained(path)`` loads
    and that gives the same outputs. Returns the folder."""
    if not isinstance(model, UNet):
        raise ValueError(f"only jaxdiff's UNet has a UNet2DModel twin, got {type(model).__name__}")
    in_channels = int(params["conv_in"]["kernel"].shape[2])
    config = diffusers_config(model, in_channels=in_channels, sample_size=sample_size)
    return write_folder(pathlib.Path(path), config, state_dict_from_params(params))
