"""The UNet's blocks, diffusers' DownBlock2D / AttnDownBlock2D, UNetMidBlock2D and
UpBlock2D / AttnUpBlock2D (the DDPM UNet's levels, Ho et al. 2020, appendix B), and the
autoencoder's UpDecoderBlock2D (DownEncoderBlock2D is DownBlock2D without attention), with their
parameter names (``resnets_j``, ``attentions_j``, ``downsamplers_0``, ``upsamplers_0``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import AttentionBlock, Downsample, ResnetBlock, Upsample

Dtype = Any


# The blocks below share these two builders. Called inside a block's compact __call__, the
# sub-module gets that block as its parent (Flax's module stack), so the parameter paths
# are block/resnets_j and block/attentions_j as in diffusers. ``remat`` wraps each in
# nn.remat (same parameters, activations recomputed in the backward pass).
def _resnet(block: nn.Module, channels: int, j: int, scale: float = 1.0):
    cls = nn.remat(ResnetBlock, static_argnums=(3,)) if block.remat else ResnetBlock
    resnet = cls(
        channels, block.num_groups, block.eps, block.dropout, block.dtype,
        scale_shift=block.resnet_time_scale_shift == "scale_shift", act_fn=block.act_fn,
        output_scale_factor=scale, name=f"resnets_{j}",
    )
    return lambda h, temb, train: resnet(h, temb, train)


def _attention(block: nn.Module, j: int, num_groups: Any = "block", scale: float = 1.0):
    cls = nn.remat(AttentionBlock) if block.remat else AttentionBlock
    return cls(
        block.attention_head_dim, block.num_groups if num_groups == "block" else num_groups,
        block.eps, block.dtype, rescale_output_factor=scale, name=f"attentions_{j}",
    )


class DownBlock2D(nn.Module):
    """``num_layers`` resnets (each followed by attention if ``attention``), then an optional
    strided-conv downsampler. Returns (h, skips): one skip per resnet, plus the downsampled
    h. diffusers' DownBlock2D / AttnDownBlock2D."""

    out_channels: int
    num_layers: int
    attention: bool
    add_downsample: bool
    downsample_padding: int = 1
    attention_head_dim: int | None = 8
    num_groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    resnet_time_scale_shift: str = "default"
    act_fn: str = "silu"
    remat: bool = False

    @nn.compact
    def __call__(
        self, h: jax.Array, temb: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for j in range(self.num_layers):
            h = _resnet(self, self.out_channels, j)(h, temb, train)
            if self.attention:
                h = _attention(self, j)(h)
            skips.append(h)
        if self.add_downsample:
            h = Downsample(self.dtype, self.downsample_padding, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UNetMidBlock2D(nn.Module):
    """resnets_0, [attentions_0,] resnets_1 at the lowest resolution; shape-preserving.

    Each output is divided by ``output_scale_factor`` (UNet2DModel's
    ``mid_block_scale_factor``); the attention's GroupNorm has ``attn_norm_num_groups``
    groups, and by default ``num_groups``, or none in a scale-shift UNet (as diffusers)."""

    attention: bool = True
    output_scale_factor: float = 1.0
    attn_norm_num_groups: int | None = None
    attention_head_dim: int | None = 8
    num_groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    resnet_time_scale_shift: str = "default"
    act_fn: str = "silu"
    remat: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, *, train: bool = False) -> jax.Array:
        channels, scale = h.shape[-1], self.output_scale_factor
        h = _resnet(self, channels, 0, scale)(h, temb, train)
        if self.attention:
            groups = self.attn_norm_num_groups
            if groups is None and self.resnet_time_scale_shift == "default":
                groups = self.num_groups
            h = _attention(self, 0, groups, scale)(h)  # groups None: no GroupNorm
        return _resnet(self, channels, 1, scale)(h, temb, train)


class UpBlock2D(nn.Module):
    """``num_layers`` resnets, each on concat(h, the next skip popped from the end), each
    followed by attention if ``attention``, then an optional nearest+conv upsampler.
    diffusers' UpBlock2D / AttnUpBlock2D (the UNet builds them with layers_per_block + 1)."""

    out_channels: int
    num_layers: int
    attention: bool
    add_upsample: bool
    attention_head_dim: int | None = 8
    num_groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    resnet_time_scale_shift: str = "default"
    act_fn: str = "silu"
    remat: bool = False

    @nn.compact
    def __call__(
        self, h: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, *, train: bool = False
    ) -> jax.Array:
        skips = list(skips)
        for j in range(self.num_layers):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = _resnet(self, self.out_channels, j)(h, temb, train)
            if self.attention:
                h = _attention(self, j)(h)
        if self.add_upsample:
            h = Upsample(self.dtype, name="upsamplers_0")(h)
        return h


class UpDecoderBlock2D(nn.Module):
    """An autoencoder decoder's level: ``num_layers`` resnets without time embedding and
    without skips, then an optional nearest+conv upsampler. diffusers' UpDecoderBlock2D."""

    out_channels: int
    num_layers: int
    add_upsample: bool
    num_groups: int = 32
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    act_fn: str = "silu"
    resnet_time_scale_shift: str = "default"
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        for j in range(self.num_layers):
            h = _resnet(self, self.out_channels, j)(h, None, train)
        if self.add_upsample:
            h = Upsample(self.dtype, name="upsamplers_0")(h)
        return h


def block_options(module: nn.Module) -> dict[str, Any]:
    """The blocks' shared fields from a module with the UNet's architecture fields."""
    return dict(
        attention_head_dim=module.attention_head_dim, num_groups=module.norm_num_groups,
        eps=module.norm_eps, dropout=module.dropout, dtype=module.dtype,
        resnet_time_scale_shift=module.resnet_time_scale_shift, act_fn=module.act_fn,
        remat=module.remat,
    )
