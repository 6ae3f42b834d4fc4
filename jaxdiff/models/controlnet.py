"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models") for jaxdiff's UNet.

A trainable copy of the base UNet's embeddings, down path and middle block (initialised
from the base parameters) reads the noisy image plus a hint map; a small hint encoder
brings the hint to the first feature resolution and adds it to the copy's conv_in output
(paper eq. 2, c_f = E(c_i)); zero-initialised 1x1 convolutions ("zero convolutions",
eq. 2's Z) turn each skip activation and the middle block's output into residuals that
are added, times ``conditioning_scale`` (diffusers' ``controlnet_conditioning_scale``), to
the frozen base UNet's skips and middle block (``UNet(down_residuals=, mid_residual=)``).
Because the zero convolutions start at zero, the controlled model is exactly the base
model at initialisation (eq. 3, y_c = y).

Parameter names follow diffusers' ``ControlNetModel``: the copied parts keep the UNet's
names (``time_embedding``, ``class_embedding``, ``conv_in``, ``down_blocks_i``,
``mid_block``), plus ``controlnet_cond_embedding/{conv_in,blocks_i,conv_out}``,
``controlnet_down_blocks_k`` and ``controlnet_mid_block``.

``ControlledUNet`` puts the two together with the base parameters closed over, and has the
``init``/``apply``/``num_classes`` of a model, so losses, guidance, samplers and the train
harness use it unchanged while the optimizer only ever sees the ControlNet's parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import PADDING_1
from jaxdiff.models.unet import UNet, encode

# Top-level parameter subtrees the ControlNet shares (by name and shape) with the UNet.
COPIED = ("time_embedding", "class_embedding", "context_embedding", "conv_in", "mid_block")


def _zero_conv(features: int, dtype: Any, name: str) -> nn.Conv:
    return nn.Conv(
        features, (1, 1), dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
    )


class HintEncoder(nn.Module):
    """Hint (B, H, W, C_hint) in [0, 1] -> features (B, H, W, out_channels): 3x3 convs with
    SiLU through ``channels``, then a zero-initialised 3x3 conv (diffusers'
    ``ControlNetConditioningEmbedding`` without the striding: our first UNet features are
    at the image resolution)."""

    channels: tuple[int, ...]
    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hint: jax.Array) -> jax.Array:
        conv = dict(padding=PADDING_1, dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.silu(nn.Conv(self.channels[0], (3, 3), name="conv_in", **conv)(hint))
        for i, c in enumerate(self.channels[1:]):
            h = nn.silu(nn.Conv(c, (3, 3), name=f"blocks_{i}", **conv)(h))
        return nn.Conv(
            self.out_channels, (3, 3), name="conv_out", kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros, **conv,
        )(h)


class ControlNet(nn.Module):
    """``apply(variables, x, t, cond, train=...) -> (down_residuals, mid_residual)``: the
    residuals ``UNet.__call__`` takes, unscaled. ``cond`` is a dict with 'hint' (B, H, W,
    C_hint) float in [0, 1] and the base model's 'label' / 'context' entries.

    ``unet`` is the base UNet whose architecture fields the copy takes (its
    decoder fields are unused); ``hint_channels`` are the hint encoder's widths.
    """

    unet: UNet
    hint_channels: tuple[int, ...] = (16, 32)

    @classmethod
    def from_unet(cls, unet: UNet, *, hint_channels: tuple[int, ...] = (16, 32)) -> ControlNet:
        return cls(unet.clone(parent=None), tuple(hint_channels))

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: Any, *, train: bool = False
    ) -> tuple[list[jax.Array], jax.Array]:
        unet, dtype = self.unet, self.unet.dtype
        hint = hint_of(cond, x)
        features = HintEncoder(
            tuple(self.hint_channels), unet.block_out_channels[0], dtype,
            name="controlnet_cond_embedding",
        )(hint.astype(dtype))
        # The encoder's layers are built here, in this module: the copy's own parameters.
        _, skips, mid = encode(unet, x, t, cond, train=train, hint_features=features)
        down = [
            _zero_conv(s.shape[-1], dtype, f"controlnet_down_blocks_{k}")(s)
            for k, s in enumerate(skips)
        ]
        return down, _zero_conv(mid.shape[-1], dtype, "controlnet_mid_block")(mid)


def hint_of(cond: Any, x: jax.Array) -> jax.Array:
    """The 'hint' entry of ``cond``, checked to be (B, H, W, C) with x's B, H and W."""
    if not isinstance(cond, dict) or "hint" not in cond:
        raise ValueError(
            "a ControlNet needs cond={'hint': (B, H, W, C) in [0, 1], 'label': ...}; got "
            f"{type(cond).__name__}"
        )
    hint = jnp.asarray(cond["hint"])
    if hint.ndim != 4 or hint.shape[:3] != x.shape[:3]:
        raise ValueError(f"hint has shape {hint.shape}; want (B, H, W, C) = {x.shape[:3]} + (C,)")
    return hint


def copy_from_unet(controlnet_params: Any, unet_params: Any) -> Any:
    """ControlNet params with the copied subtrees (COPIED and every ``down_blocks_i``) taken
    from the base UNet's params (the paper's trainable copy, initialised as the base)."""
    out = dict(controlnet_params)
    for name in controlnet_params:
        if name in COPIED or name.startswith("down_blocks_"):
            shapes = jax.tree.map(jnp.shape, controlnet_params[name])
            if jax.tree.map(jnp.shape, unet_params.get(name)) != shapes:
                raise ValueError(f"the base UNet's {name!r} does not match the ControlNet's")
            out[name] = jax.tree.map(lambda p: jnp.array(p, copy=True), unet_params[name])
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ControlledUNet:
    """The frozen base UNet (``unet`` with ``base_params``) steered by a ``controlnet``.

    A model in the jaxdiff sense whose parameters are the ControlNet's alone:
    ``init(key, x, t, cond=None)`` gives ``{'params': ControlNet params}`` initialised from
    the base (``copy_from_unet``; the hint is zeros of ``hint_channels`` channels when
    ``cond`` has none); ``apply({'params': p}, x, t, cond, train=...)`` runs the ControlNet
    (dropout when training) and the base UNet in inference mode, with residuals times
    ``conditioning_scale``. Gradients reach only ``p``; base_params are constants.
    """

    unet: UNet
    controlnet: ControlNet
    base_params: Any
    hint_channels: int = 1
    conditioning_scale: float = 1.0

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    @property
    def context_dim(self) -> int | None:
        return self.unet.context_dim

    def init(self, key: jax.Array, x: jax.Array, t: jax.Array, cond: Any = None) -> dict:
        if not isinstance(cond, dict) or "hint" not in cond:
            hint = jnp.zeros(x.shape[:3] + (self.hint_channels,), jnp.float32)
            cond = {**(cond if isinstance(cond, dict) else {}), "hint": hint}
        params = self.controlnet.init(key, x, t, cond)["params"]
        return {"params": copy_from_unet(params, self.base_params)}

    def apply(
        self,
        variables: dict,
        x: jax.Array,
        t: jax.Array,
        cond: Any,
        *,
        train: bool = False,
        rngs: Any = None,
    ) -> jax.Array:
        down, mid = self.controlnet.apply(variables, x, t, cond, train=train, rngs=rngs)
        scale = self.conditioning_scale
        return self.unet.apply(
            {"params": self.base_params}, x, t, cond, train=False,
            down_residuals=[scale * r for r in down], mid_residual=scale * mid,
        )

