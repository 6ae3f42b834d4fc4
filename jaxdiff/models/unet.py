"""The main UNet: diffusers' ``UNet2DModel`` in Flax, parameter for parameter.

The improvements of UNet2DModel over a basic UNet (MNIST seed): GroupNorm in every block,
dropout, ``layers_per_block`` residual blocks per resolution, self-attention at chosen
(low-resolution) levels, a sinusoidal timestep embedding + MLP added in every residual
block, learnable down- (strided conv) and upsampling (nearest + conv). The architecture is
the DDPM UNet (Ho et al. 2020, appendix B), itself PixelCNN++'s UNet with Wide-ResNet
blocks. Optional class labels (a table of ``num_classes + 1`` rows, the last is the null
label of classifier-free guidance) and a float context vector are added to the time
embedding.

Parameter names (diffusers state-dict key -> Flax path). Dots between a module and its
list index become underscores; ``weight`` is ``kernel`` for Conv/Linear (conv (O, I, kh,
kw) -> (kh, kw, I, O), linear (O, I) -> (I, O)), ``scale`` for GroupNorm and
``embedding`` for nn.Embedding; ``bias`` stays ``bias``:

    time_embedding.linear_{1,2}                  time_embedding/linear_{1,2}
    class_embedding                              class_embedding   (num_classes + 1 rows)
    (no counterpart)                             context_embedding (Dense, context_dim)
    conv_in                                      conv_in
    down_blocks.i.resnets.j.{norm1,conv1,        down_blocks_i/resnets_j/{norm1,conv1,
        time_emb_proj,norm2,conv2,conv_shortcut}     time_emb_proj,norm2,conv2,conv_shortcut}
    down_blocks.i.attentions.j.{group_norm,      down_blocks_i/attentions_j/{group_norm,
        to_q,to_k,to_v,to_out.0}                     to_q,to_k,to_v,to_out_0}
    down_blocks.i.downsamplers.0.conv            down_blocks_i/downsamplers_0/conv
    mid_block.resnets.{0,1}, .attentions.0       mid_block/resnets_{0,1}, attentions_0
    up_blocks.i.resnets.j (j < layers+1), ...    up_blocks_i/resnets_j, attentions_j
    up_blocks.i.upsamplers.0.conv                up_blocks_i/upsamplers_0/conv
    conv_norm_out, conv_out                      conv_norm_out, conv_out

Down block i works at resolution H / 2**i; up block i at H / 2**(n-1-i). The last down
block has no downsampler and the last up block no upsampler. ``diffusers_kwargs(unet,
in_channels=C)`` gives the ``UNet2DModel(**kwargs)`` of the same architecture. The blocks
live in ``jaxdiff.models.unet_blocks``.

ControlNet residuals (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models"; diffusers' ``down_block_additional_residuals`` /
``mid_block_additional_residual``): the skip activations, in order, are conv_in's output,
then for each down block i its ``layers_per_block`` resnet(+attention) outputs and, unless
it is the last, its downsampler's output. ``UNet.skip_shapes(height, width)`` lists their
(h, w, c); the mid-block residual has the shape of the last skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import (
    PADDING_1,
    TimestepEmbedding,
    activation,
    split_cond,
    timestep_embedding,
)
from jaxdiff.models.unet_blocks import DownBlock2D, UNetMidBlock2D, UpBlock2D, block_options

Dtype = Any


class UNet(nn.Module):
    """UNet2DModel-style denoiser; ``apply(variables, x, t, cond, train=...)`` maps
    (B, H, W, C) to (B, H, W, out_channels or C), float32.

    Attributes:
      block_out_channels: channels per resolution level, e.g. (32, 64, 64); for the
        base-times-multipliers form pass ``tuple(base * m for m in mults)``.
      layers_per_block: residual blocks per down level (up levels have one more).
      attention_levels: level indices (0 = full resolution) with self-attention; the mid
        block has attention when ``mid_attention``. Default (1, 2) is the MNIST seed's
        ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D").
      attention_head_dim: channels per attention head (None: one head per block).
      norm_num_groups, norm_eps: GroupNorm groups (must divide every channel count), eps.
      dropout: dropout rate inside every residual block (active only with train=True,
        which then needs ``rngs={'dropout': key}``).
      time_embedding_dim: width of the time embedding; None -> 4 * block_out_channels[0].
      flip_sin_to_cos, freq_shift: options of ``timestep_embedding`` (diffusers defaults).
      num_classes: number of class labels (table of num_classes + 1 rows, the last one the
        null label), or None.
      context_dim: size D of a float context (B, D) added to the time embedding through a
        Dense layer (zeros = null), or None.
      out_channels: output channels; None = the input's.
      dtype: computation dtype; parameters stay float32 and the output is float32.
      downsample_padding: 1 pads the stride-2 downsampling conv on every side; 0 pads only
        bottom/right by one (the google/ddpm-* checkpoints; see ``layers.Downsample``).
      resnet_time_scale_shift: "default" adds the time embedding before norm2;
        "scale_shift" modulates norm2's output, ``norm2(h) * (1 + scale) + shift``.
      act_fn: the residual blocks' activation (diffusers' names: silu, swish, mish, gelu,
        relu); the time MLP and the output head always use SiLU, as UNet2DModel does.
      mid_block_scale_factor: the mid block's resnets and attention divide their outputs
        by it.
      attn_norm_num_groups: GroupNorm groups in front of the mid-block attention; None:
        ``norm_num_groups`` with "default" time embedding, no GroupNorm with "scale_shift".
      center_input_sample: the input is in [0, 1] and is mapped to ``2 x - 1`` first.
      remat: rematerialise every resnet and attention block in the backward pass (same
        parameters and outputs; less activation memory for about one more forward pass).
    """

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (1, 2)
    mid_attention: bool = True
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    time_embedding_dim: int | None = None
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    num_classes: int | None = None
    context_dim: int | None = None
    out_channels: int | None = None
    dtype: Dtype = jnp.float32
    downsample_padding: int = 1
    resnet_time_scale_shift: str = "default"
    act_fn: str = "silu"
    mid_block_scale_factor: float = 1.0
    attn_norm_num_groups: int | None = None
    center_input_sample: bool = False
    remat: bool = False

    def skip_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(h, w, c) of each skip activation, in the order ``down_residuals`` takes them.

        The mid-block residual has the shape of the last entry.
        """
        chans, n = self.block_out_channels, len(self.block_out_channels)
        shapes = [(height, width, chans[0])]
        for i, c in enumerate(chans):
            h, w = height // 2**i, width // 2**i
            shapes += [(h, w, c)] * self.layers_per_block
            if i < n - 1:
                shapes.append((h // 2, w // 2, c))
        return shapes

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        cond: Any = None,
        *,
        train: bool = False,
        down_residuals: Sequence[jax.Array] | None = None,
        mid_residual: jax.Array | None = None,
    ) -> jax.Array:
        """x: (B, H, W, C); t: (B,) int timesteps (or a scalar); cond: None, (B,) int labels,
        (B, D) float context or a dict with 'label' / 'context' ('hint' is ignored; a
        missing label/context is the null one). down_residuals: a sequence matching
        ``skip_shapes(H, W)``, added to the skips; mid_residual: added to the mid-block
        output (ControlNet). Returns (B, H, W, out_channels or C) float32."""
        self._check(x)
        chans, n = self.block_out_channels, len(self.block_out_channels)
        emb, skips, h = encode(self, x, t, cond, train=train)
        if down_residuals is not None:
            skips = self._add_residuals(skips, down_residuals)
        if mid_residual is not None:
            if mid_residual.shape != h.shape:
                raise ValueError(f"mid_residual has shape {mid_residual.shape}, want {h.shape}")
            h = h + mid_residual.astype(h.dtype)

        for i, c in enumerate(reversed(chans)):
            level_skips = skips[-(self.layers_per_block + 1):]
            skips = skips[: -(self.layers_per_block + 1)]
            h = UpBlock2D(
                c, self.layers_per_block + 1, (n - 1 - i) in self.attention_levels, i < n - 1,
                name=f"up_blocks_{i}", **block_options(self),
            )(h, level_skips, emb, train=train)

        h = nn.GroupNorm(
            num_groups=self.norm_num_groups, epsilon=self.norm_eps, dtype=self.dtype,
            param_dtype=jnp.float32, name="conv_norm_out",
        )(h)
        h = nn.Conv(
            self.out_channels or x.shape[-1], (3, 3), padding=PADDING_1, dtype=self.dtype,
            param_dtype=jnp.float32, name="conv_out",
        )(nn.silu(h))
        return h.astype(jnp.float32)

    def _check(self, x: jax.Array) -> None:
        chans, n = self.block_out_channels, len(self.block_out_channels)
        if x.ndim != 4:
            raise ValueError(f"UNet wants NHWC images (B, H, W, C), got shape {x.shape}")
        if n == 0:
            raise ValueError("block_out_channels must list at least one level, e.g. (32, 64, 64)")
        factor = 2 ** (n - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image size {x.shape[1:3]} must be divisible by 2**(levels-1) = {factor} for "
                f"{n} levels; pad the images or use fewer block_out_channels"
            )
        bad = [c for c in chans if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every channel count; "
                f"{bad} in block_out_channels={chans} do not"
            )
        if any(not 0 <= i < n for i in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must be in [0, {n})")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(
                "resnet_time_scale_shift must be 'default' or 'scale_shift', got "
                f"{self.resnet_time_scale_shift!r}"
            )
        if int(self.downsample_padding) < 0:
            raise ValueError(f"downsample_padding must be >= 0, got {self.downsample_padding}")
        activation(self.act_fn)  # raises ValueError naming the known ones

    def _add_residuals(
        self, skips: list[jax.Array], residuals: Sequence[jax.Array]
    ) -> list[jax.Array]:
        if len(residuals) != len(skips):
            raise ValueError(
                f"down_residuals has {len(residuals)} arrays but the UNet has {len(skips)} "
                "skip activations; see UNet.skip_shapes(height, width)"
            )
        out = []
        for k, (s, r) in enumerate(zip(skips, residuals, strict=True)):
            if r.shape != s.shape:
                raise ValueError(f"down_residuals[{k}] has shape {r.shape}, want {s.shape}")
            out.append(s + r.astype(s.dtype))
        return out


def encode(
    module: nn.Module,
    x: jax.Array,
    t: jax.Array,
    cond: Any,
    *,
    train: bool,
    hint_features: jax.Array | None = None,
) -> tuple[jax.Array, list[jax.Array], jax.Array]:
    """The UNet's embeddings, down path and middle block, built inside ``module``'s compact
    ``__call__`` (so the parameters are ``module/time_embedding``, ``conv_in``,
    ``down_blocks_i``, ``mid_block``...). ``module`` has the UNet's architecture fields;
    the UNet and the ControlNet (its trainable copy) both call this.

    ``hint_features`` (B, H, W, block_out_channels[0]) are added to conv_in's output
    (ControlNet, Zhang et al. 2023, eq. 2: the condition enters the copy's input).
    Returns (emb (B, temb), skips as ``UNet.skip_shapes``, the middle block's output).
    """
    b = x.shape[0]
    chans, n = module.block_out_channels, len(module.block_out_channels)
    if module.center_input_sample:
        x = 2 * x - 1.0
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    t_freq = timestep_embedding(
        t, chans[0], flip_sin_to_cos=module.flip_sin_to_cos, freq_shift=module.freq_shift
    )
    temb_dim = module.time_embedding_dim or 4 * chans[0]
    emb = TimestepEmbedding(temb_dim, module.dtype, name="time_embedding")(
        t_freq.astype(module.dtype)
    )
    labels, context = split_cond(
        cond, batch=b, num_classes=module.num_classes, context_dim=module.context_dim
    )
    if labels is not None:
        emb = emb + nn.Embed(
            module.num_classes + 1, temb_dim, dtype=module.dtype, param_dtype=jnp.float32,
            name="class_embedding",
        )(labels)
    if context is not None:
        emb = emb + nn.Dense(
            temb_dim, dtype=module.dtype, param_dtype=jnp.float32, name="context_embedding"
        )(context)

    h = nn.Conv(
        chans[0], (3, 3), padding=PADDING_1, dtype=module.dtype, param_dtype=jnp.float32,
        name="conv_in",
    )(x.astype(module.dtype))
    if hint_features is not None:
        h = h + hint_features.astype(h.dtype)
    skips = [h]
    for i, c in enumerate(chans):
        h, level_skips = DownBlock2D(
            c, module.layers_per_block, i in module.attention_levels, i < n - 1,
            module.downsample_padding, name=f"down_blocks_{i}", **block_options(module),
        )(h, emb, train=train)
        skips += level_skips
    h = UNetMidBlock2D(
        module.mid_attention, module.mid_block_scale_factor, module.attn_norm_num_groups,
        name="mid_block", **block_options(module),
    )(h, emb, train=train)
    return emb, skips, h


def diffusers_kwargs(
    unet: UNet, *, in_channels: int, sample_size: int | None = None
) -> dict[str, Any]:
    """``diffusers.UNet2DModel(**kwargs)`` of the same architecture (same parameter count,
    and the same function once the weights are copied over per the module docstring).

    ``in_channels`` is needed because the Flax module infers it from its input. A UNet
    with ``context_dim`` has no UNet2DModel twin (no context embedding there).
    """
    if unet.context_dim is not None:
        raise ValueError(
            "UNet2DModel has no float context embedding; use context_dim=None for a "
            "diffusers twin"
        )
    chans, n = tuple(unet.block_out_channels), len(unet.block_out_channels)
    attn = [i in unet.attention_levels for i in range(n)]
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=unet.out_channels or in_channels,
        time_embedding_type="positional",
        time_embedding_dim=unet.time_embedding_dim,
        flip_sin_to_cos=unet.flip_sin_to_cos,
        freq_shift=unet.freq_shift,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        mid_block_type="UNetMidBlock2D",
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=chans,
        layers_per_block=unet.layers_per_block,
        mid_block_scale_factor=unet.mid_block_scale_factor,
        downsample_padding=unet.downsample_padding,
        downsample_type="conv",
        upsample_type="conv",
        dropout=unet.dropout,
        act_fn=unet.act_fn,
        attention_head_dim=unet.attention_head_dim,
        norm_num_groups=unet.norm_num_groups,
        norm_eps=unet.norm_eps,
        resnet_time_scale_shift=unet.resnet_time_scale_shift,
        attn_norm_num_groups=unet.attn_norm_num_groups,
        center_input_sample=unet.center_input_sample,
        add_attention=unet.mid_attention,
        class_embed_type=None,
        num_class_embeds=None if unet.num_classes is None else unet.num_classes + 1,
    )
