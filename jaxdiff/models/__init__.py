"""Flax modules; each is called as ``model.apply(variables, x_t, t, cond, train=...)``.

``build(model_config)`` turns a config's ``model`` section into a module: the field ``name``
picks the class and every other field is passed to it as an attribute, so a config can set
any attribute the module has (``--config.model.dropout=0.1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

MODEL_NAMES = ("unet", "context_unet", "basic_unet", "dit", "classifier", "autoencoder")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build(model_config: Mapping[str, Any]) -> nn.Module:
    """Builds the module named by ``model_config['name']`` with the remaining fields."""
    fields = dict(model_config)
    name = fields.pop("name", None)
    if "dtype" in fields and isinstance(fields["dtype"], str):
        if fields["dtype"] not in DTYPES:
            raise ValueError(
                f"model.dtype must be one of {sorted(DTYPES)}, got {fields['dtype']!r}"
            )
        fields["dtype"] = DTYPES[fields["dtype"]]
    for key, value in fields.items():
        if isinstance(value, list):  # ConfigDict/JSON give lists; Flax attributes want tuples
            fields[key] = tuple(value)
    if name == "unet":
        from jaxdiff.models.unet import UNet as cls
    elif name == "context_unet":
        from jaxdiff.models.context_unet import ContextUnet as cls
    elif name == "basic_unet":
        from jaxdiff.models.basic_unet import BasicUNet as cls
    elif name == "dit":
        from jaxdiff.models.dit import DiT as cls
    elif name == "classifier":  # the noise-conditioned classifier of classifier guidance
        from jaxdiff.models.classifier import Classifier as cls
    elif name == "autoencoder":  # the KL autoencoder of latent diffusion
        from jaxdiff.models.autoencoder import AutoencoderKL as cls
    else:
        raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")
    known = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"model {name!r} has no attribute(s) {unknown}; it takes {sorted(known)}"
        )
    return cls(**fields)
