"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", sec. 3 and appendix G), as diffusers'
``AutoencoderKL`` parameter for parameter.

The encoder maps an image x (B, H, W, C) in [-1, 1] to the mean and log-variance of a
diagonal Gaussian posterior q(z | x) over latents (B, H/f, W/f, latent_channels), f =
2^(levels - 1); the decoder maps a latent back to an image. Trained with a reconstruction
loss plus a small KL(q(z | x) || N(0, I)) (sec. 3, "KL-reg."), the latent space is smooth
and low-dimensional, and a diffusion model trained there is cheaper than one on pixels.

``scaling_factor`` (and ``shift_factor``) bring the latents to about unit variance for the
diffusion model (sec. 4.3.2, appendix D.1): ``z_diffusion = (z - shift_factor) *
scaling_factor`` (``scale_latents``), and back before decoding (``unscale_latents``).

Parameter tree (diffusers' state dict names with ``.`` -> ``/`` and ModuleList entries as
``name_j``): ``encoder/{conv_in, down_blocks_i/{resnets_j, downsamplers_0/conv}, mid_block/
{resnets_0, attentions_0, resnets_1}, conv_norm_out, conv_out}``, ``quant_conv``,
``post_quant_conv``, ``decoder/{conv_in, mid_block, up_blocks_i/{resnets_j,
upsamplers_0/conv}, conv_norm_out, conv_out}``. The blocks are the UNet's
(``jaxdiff.models.unet_blocks``) without time embedding.

``model.apply({"params": p}, x, method="encode") -> (mean, logvar)``;
``model.apply({"params": p}, z, method="decode") -> x``; ``model.apply({"params": p}, x,
key) -> (reconstruction, mean, logvar)`` with z drawn from the posterior (its mean when
``key`` is None).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import PADDING_1, activation
from jaxdiff.models.unet_blocks import DownBlock2D, UNetMidBlock2D, UpDecoderBlock2D

Dtype = Any
EPS = 1e-6  # every GroupNorm of diffusers' Encoder / Decoder
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps log sigma^2


def _conv(features: int, kernel: int, dtype: Dtype, name: str) -> nn.Conv:
    padding = PADDING_1 if kernel == 3 else ((0, 0), (0, 0))
    return nn.Conv(features, (kernel, kernel), padding=padding, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


def _mid_block(module: nn.Module) -> UNetMidBlock2D:
    # One attention head over all channels (diffusers passes attention_head_dim=C).
    return UNetMidBlock2D(
        attention=module.mid_block_add_attention, attention_head_dim=None,
        num_groups=module.norm_num_groups, eps=EPS, dtype=module.dtype, act_fn=module.act_fn,
        name="mid_block",
    )


def _norm_act_conv(module: nn.Module, h: jax.Array, features: int) -> jax.Array:
    # conv_norm_out, SiLU (always SiLU in diffusers, whatever act_fn), conv_out.
    h = nn.GroupNorm(num_groups=module.norm_num_groups, epsilon=EPS, dtype=module.dtype,
                     param_dtype=jnp.float32, name="conv_norm_out")(h)
    return _conv(features, 3, module.dtype, "conv_out")(nn.silu(h))


class Encoder(nn.Module):
    """x (B, H, W, C) -> posterior parameters (B, H/f, W/f, 2 latent_channels): conv_in,
    one DownEncoderBlock2D per level (stride-2 conv with diffusers' bottom-right padding on
    all but the last), the mid block, norm, SiLU, conv_out. diffusers' ``Encoder``."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chans = self.block_out_channels
        h = _conv(chans[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for i, c in enumerate(chans):
            h, _ = DownBlock2D(
                c, self.layers_per_block, attention=False, add_downsample=i < len(chans) - 1,
                downsample_padding=0, num_groups=self.norm_num_groups, eps=EPS,
                dtype=self.dtype, act_fn=self.act_fn, name=f"down_blocks_{i}",
            )(h, None)
        h = _mid_block(self)(h, None)
        return _norm_act_conv(self, h, 2 * self.latent_channels)


class Decoder(nn.Module):
    """z (B, h, w, latent_channels) -> x (B, h f, w f, out_channels): conv_in, the mid block,
    one UpDecoderBlock2D (layers_per_block + 1 resnets, then nearest+conv upsampling on all
    but the last) per level from the widest, norm, SiLU, conv_out. diffusers' ``Decoder``."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    out_channels: int
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        chans = tuple(reversed(self.block_out_channels))
        h = _conv(chans[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        h = _mid_block(self)(h, None)
        for i, c in enumerate(chans):
            h = UpDecoderBlock2D(
                c, self.layers_per_block + 1, add_upsample=i < len(chans) - 1,
                num_groups=self.norm_num_groups, eps=EPS, dtype=self.dtype, act_fn=self.act_fn,
                name=f"up_blocks_{i}",
            )(h)
        return _norm_act_conv(self, h, self.out_channels)


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` (attributes are its config fields; see the module
    docstring). Images NHWC in [-1, 1]; latents NHWC; float32 outputs."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        activation(self.act_fn)  # an unknown name fails here, by name
        shared = dict(block_out_channels=tuple(self.block_out_channels),
                      layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                      act_fn=self.act_fn, mid_block_add_attention=self.mid_block_add_attention,
                      dtype=self.dtype)
        self.encoder = Encoder(latent_channels=self.latent_channels, **shared)
        self.decoder = Decoder(out_channels=self.out_channels, **shared)
        latent = self.latent_channels
        self.quant_conv = _conv(2 * latent, 1, self.dtype, "quant_conv") if (
            self.use_quant_conv) else None
        self.post_quant_conv = _conv(latent, 1, self.dtype, "post_quant_conv") if (
            self.use_post_quant_conv) else None

    @property
    def downsample_factor(self) -> int:
        """f: an image side over its latent's side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (B, H, W, C) in [-1, 1] -> (mean, logvar), each (B, H/f, W/f, latent_channels):
        the diagonal Gaussian q(z | x), log sigma^2 clamped to [-30, 20] as diffusers."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents z (B, h, w, latent_channels) (not scaled) -> images (B, h f, w f, C)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(reconstruction, mean, logvar): decode(z) with z = mean + sigma eps drawn from
        q(z | x) by ``key`` (the reparameterisation of Kingma & Welling 2014, eq. 10), or
        z = mean when ``key`` is None."""
        mean, logvar = self.encode(x)
        z = mean
        if key is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar


def scale_latents(z: jax.Array, *, scaling_factor: float,
                  shift_factor: float | None = None) -> jax.Array:
    """The diffusion model's latents: (z - shift_factor) * scaling_factor (LDM sec. 4.3.2:
    unit variance, so the noise schedule's signal-to-noise ratios mean what they do on
    images in [-1, 1])."""
    return (z - (shift_factor or 0.0)) * scaling_factor


def unscale_latents(z: jax.Array, *, scaling_factor: float,
                    shift_factor: float | None = None) -> jax.Array:
    """The inverse of :func:`scale_latents`: the autoencoder's latents, ready to decode."""
    return z / scaling_factor + (shift_factor or 0.0)
