"""Reusable UNet pieces, written to match diffusers' layers parameter for parameter.

Every module here mirrors one diffusers module (``diffusers.models``), with the same
sub-module names, so a PyTorch state dict maps one to one onto the Flax tree (see the
table in ``jaxdiff.models.unet``):

* ``timestep_embedding``   ``embeddings.get_timestep_embedding`` (the sinusoids of Vaswani
                           et al. 2017 sec. 3.5, used for t by DDPM, Ho et al. 2020 sec. 4)
* ``TimestepEmbedding``    ``embeddings.TimestepEmbedding``  (linear_1, SiLU, linear_2)
* ``ResnetBlock``          ``resnet.ResnetBlock2D`` (time_embedding_norm "default" or
                           "scale_shift", any ``non_linearity``, ``output_scale_factor``)
* ``AttentionBlock``       ``attention_processor.Attention`` as built by the UNet2D blocks
                           (group_norm, to_q, to_k, to_v, to_out_0; residual connection,
                           ``rescale_output_factor``)
* ``Downsample``           ``downsampling.Downsample2D(use_conv=True, padding=p)``
* ``Upsample``             ``upsampling.Upsample2D(use_conv=True)``
* ``split_cond``           reads a jaxdiff condition (None, labels, context, dict) and
                           fills in the null label / null context a model needs.

All modules compute in ``dtype`` and keep float32 parameters. Images are NHWC.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff import matmul
from jaxdiff.attention import dot_product_attention

Dtype = Any
PADDING_1 = ((1, 1), (1, 1))  # torch's padding=1; explicit so stride 2 pads like PyTorch

# diffusers' ``activations.get_activation`` names -> functions (its GELU is the exact one).
ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}


def activation(name: str):
    """The activation function called ``name`` in diffusers (``act_fn``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def timestep_embedding(
    t: jax.Array,
    dim: int,
    *,
    max_period: float = 10000,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0,
) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps; (B,) -> (B, dim) float32.

    Transformer positional encoding (Vaswani et al. 2017, sec. 3.5) applied to t, as in DDPM
    (Ho et al. 2020, sec. 4 / appendix B). With half = dim // 2,
    ``freq_k = exp(-log(max_period) * k / (half - freq_shift))`` for k in [0, half) and the
    output is ``[cos(t freq), sin(t freq)]`` (``flip_sin_to_cos=True``) or
    ``[sin(t freq), cos(t freq)]``; an odd ``dim`` gets one zero column at the end. Same
    numbers as diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos,
    downscale_freq_shift=freq_shift, max_period=max_period)``; UNet2DModel's defaults are
    ``flip_sin_to_cos=True, freq_shift=0``.
    """
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding wants t of shape (B,), got shape {t.shape}")
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = t[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def split_cond(
    cond: Any, *, batch: int, num_classes: int | None, context_dim: int | None
) -> tuple[jax.Array | None, jax.Array | None]:
    """(labels (B,) int32 | None, context (B, D) float32 | None) from a jaxdiff condition.

    ``cond`` is None, int labels (B,), a float context (B, D), or a dict with optional
    'label' / 'context' entries ('hint' is for ControlNet and ignored here). A model with
    ``num_classes`` (``context_dim``) always gets labels (a context): a missing one is the
    null label ``num_classes`` (the zero context), so the parameter tree never depends on
    the ``cond`` given at ``init`` and ``cond=None`` means "unconditional".
    """
    if cond is None:
        labels = context = None
    elif isinstance(cond, dict):
        unknown = sorted(set(cond) - {"label", "context", "hint"})
        if unknown:
            raise ValueError(
                f"cond dict has unknown keys {unknown}; use 'label', 'context', 'hint'"
            )
        labels, context = cond.get("label"), cond.get("context")
    elif jnp.issubdtype(jnp.asarray(cond).dtype, jnp.integer):
        labels, context = cond, None
    else:
        labels, context = None, cond

    if labels is not None and num_classes is None:
        raise ValueError("cond has class labels but the model has num_classes=None; set it")
    if context is not None and context_dim is None:
        raise ValueError("cond has a float context but the model has context_dim=None; set it")
    if num_classes is not None:
        labels = (
            jnp.full((batch,), num_classes, jnp.int32)
            if labels is None
            else jnp.asarray(labels, jnp.int32).reshape(batch)
        )
    if context_dim is not None:
        if context is None:
            context = jnp.zeros((batch, context_dim), jnp.float32)
        context = jnp.asarray(context, jnp.float32)
        if context.shape != (batch, context_dim):
            raise ValueError(
                f"context must have shape (B, context_dim) = {(batch, context_dim)}, "
                f"got {context.shape}"
            )
    return labels, context


def _group_norm(num_groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    # Flax computes the statistics in float32 even for bf16 inputs, like torch autocast.
    return nn.GroupNorm(
        num_groups=num_groups, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name
    )


def _conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1) -> nn.Conv:
    padding = PADDING_1 if kernel == 3 else ((0, 0), (0, 0))
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding,
        dtype=dtype, param_dtype=jnp.float32, name=name,
    )


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    dot_general=matmul.dot_general)


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding: linear_1 -> SiLU -> linear_2; (B, d) -> (B, features)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.features, self.dtype, "linear_1")(x)
        return _dense(self.features, self.dtype, "linear_2")(nn.silu(x))


def _time_proj(block: nn.Module, temb: jax.Array, act) -> jax.Array:
    """``time_emb_proj(act(temb))`` as (B, 1, 1, C or 2C), called inside ``block``."""
    c = block.out_channels
    proj = _dense(2 * c if block.scale_shift else c, block.dtype, "time_emb_proj")
    return proj(act(temb))[:, None, None, :]


class ResnetBlock(nn.Module):
    """Pre-norm residual block with a time embedding (DDPM appendix B; diffusers'
    ResnetBlock2D).

    ``h = conv1(act(norm1(x)))``; the time embedding enters as
    ``h = norm2(h + time_emb_proj(act(temb)))`` (``scale_shift=False``, DDPM's additive
    form) or, with ``scale_shift=True``, ``time_emb_proj`` gives 2C numbers
    ``(scale, shift)`` and ``h = norm2(h) * (1 + scale) + shift`` (the adaptive GroupNorm
    of Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3.1);
    ``h = conv2(dropout(act(h)))``; output ``(shortcut(x) + h) / output_scale_factor`` where
    the shortcut is a 1x1 ``conv_shortcut`` only when the channel count changes.
    x: (B, H, W, C_in), temb: (B, E) or None (no time embedding and no ``time_emb_proj``, an
    autoencoder's block) -> (B, H, W, out_channels). ``train`` may be passed
    positionally so that ``nn.remat(ResnetBlock, static_argnums=(3,))`` works.
    """

    out_channels: int
    num_groups: int = 32
    eps: float = 1e-5
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    scale_shift: bool = False
    act_fn: str = "silu"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
        act = activation(self.act_fn)
        c = self.out_channels
        h = act(_group_norm(self.num_groups, self.eps, self.dtype, "norm1")(x))
        h = _conv(c, 3, self.dtype, "conv1")(h)
        norm2 = _group_norm(self.num_groups, self.eps, self.dtype, "norm2")
        if temb is None:  # no time embedding (an autoencoder's ResnetBlock2D): no time_emb_proj
            h = norm2(h)
        elif self.scale_shift:
            temb = _time_proj(self, temb, act)
            h = norm2(h) * (1 + temb[..., :c]) + temb[..., c:]
        else:
            h = norm2(h + _time_proj(self, temb, act))
        h = nn.Dropout(self.dropout)(act(h), deterministic=not train)
        h = _conv(c, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != c:
            x = _conv(c, 1, self.dtype, "conv_shortcut")(x)
        out = x + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection
    (Vaswani et al. 2017 eq. 1; DDPM's attention at 16x16; diffusers' Attention built with
    ``_from_deprecated_attn_block=True, residual_connection=True``).

    ``heads = C // head_dim`` (``head_dim=None`` means one head of size C), softmax in
    float32 (diffusers' ``upcast_softmax``); ``num_groups=None``: no ``group_norm`` (the
    mid block of a scale-shift UNet2DModel). Output ``(x + attention) /
    rescale_output_factor``. x: (B, H, W, C) -> (B, H, W, C).
    """

    head_dim: int | None = 8
    num_groups: int | None = 32
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        head_dim = self.head_dim or c
        if c % head_dim:
            raise ValueError(
                f"attention over {c} channels needs attention_head_dim dividing {c}, got "
                f"{head_dim}"
            )
        heads = c // head_dim
        h = x
        if self.num_groups is not None:
            h = _group_norm(self.num_groups, self.eps, self.dtype, "group_norm")(x)
        h = h.reshape(b, height * width, c)
        q, k, v = (
            _dense(c, self.dtype, name)(h).reshape(b, height * width, heads, head_dim)
            for name in ("to_q", "to_k", "to_v")
        )
        # Softmax in float32; cache-sized groups on CPU (jaxdiff.attention).
        out = dot_product_attention(q, k, v)
        out = out.reshape(b, height * width, c)
        out = x + _dense(c, self.dtype, "to_out_0")(out).reshape(b, height, width, c)
        return out if self.rescale_output_factor == 1 else out / self.rescale_output_factor


class Downsample(nn.Module):
    """Learnable 2x downsampling: a 3x3 conv with stride 2 (``conv``).

    ``padding`` p > 0 pads every side by p (torch's ``padding=p``); ``padding=0`` is
    diffusers' ``downsample_padding=0`` (the released google/ddpm-* UNets, after the
    original TF DDPM's "SAME" stride-2 conv): one zero row and column at the bottom and
    right, then an unpadded conv. Even H, W: (B, H, W, C) -> (B, H/2, W/2, C).
    """

    dtype: Dtype = jnp.float32
    padding: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = int(self.padding)
        pads = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
        return nn.Conv(
            x.shape[-1], (3, 3), strides=(2, 2), padding=pads, dtype=self.dtype,
            param_dtype=jnp.float32, name="conv",
        )(x)


class Upsample(nn.Module):
    """Learnable 2x upsampling: nearest-neighbour 2x, then a 3x3 conv (``conv``); the conv
    avoids the checkerboard artefacts of transposed convs (Odena et al. 2016, Distill).

    (B, H, W, C) -> (B, 2H, 2W, C).
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # = F.interpolate(mode="nearest")
        return _conv(x.shape[-1], 3, self.dtype, "conv")(x)
