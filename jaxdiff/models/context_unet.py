"""The sprites seed's small context-conditioned UNet ("ContextUnet").

From deeplearning.ai's "How Diffusion Models Work" (``diffusion_utilities.py`` and the L1-L4
notebooks), itself modified from cloneofsimo/minDiffusion; the diffusion model is DDPM
(Ho et al. 2020) and the context masking is classifier-free guidance (Ho & Salimans 2022).

Layout for height h (h divisible by 4), n = ``n_feat``::

    x (h, h, C) -> init_conv: ResidualConvBlock(C -> n, residual)          (h, h, n)
      -> down1: UnetDown(n -> n)                                           (h/2, h/2, n)
      -> down2: UnetDown(n -> 2n)                                          (h/4, h/4, 2n)
      -> to_vec: mean over the h/4 x h/4 map, GELU                         (1, 1, 2n)
      -> up0: ConvTranspose(kernel = stride = h/4), GroupNorm(8), ReLU     (h/4, h/4, 2n)
      -> up1(cemb1 * up0 + temb1, down2): UnetUp(4n -> n)                  (h/2, h/2, n)
      -> up2(cemb2 * up1 + temb2, down1): UnetUp(2n -> n)                  (h, h, n)
      -> out(concat(up2, init_conv)): conv3x3, GroupNorm(8), ReLU, conv3x3 (h, h, C)

The context embeddings *multiply* the decoder features and the time embeddings are *added*
(the seed's ``up1(cemb1*up1 + temb1, down2)``); a zero context therefore keeps only the
embedding MLP's biases, which is how the seed's unconditional case works.

Differences from the PyTorch seed, each on purpose:

* GroupNorm(8) where the seed has BatchNorm2d. BatchNorm would need mutable batch statistics
  in every train step and would make one sample's output depend on the other samples in its
  batch, which breaks batched classifier-free guidance (conditional and null halves share a
  batch). GroupNorm has the same 2 parameters (scale, bias) per channel.
* The 1x1 shortcut of the residual ``init_conv`` (channels differ) is a learned layer. The
  seed builds a fresh, randomly initialised ``nn.Conv2d`` inside ``forward`` on every call,
  so its shortcut is untrained noise and not counted in its ``parameters()``; ours adds
  C * n + n parameters.
* ``to_vec`` averages over the whole h/4 x h/4 map. The seed's ``AvgPool2d(4)`` equals that
  at the seed's h = 16 (and minDiffusion's ``AvgPool2d(7)`` at h = 28), but would keep only a
  corner (h = 20, 24) or break ``up0`` (h = 32) at other heights.
* Timesteps are int in [0, T) (index 0 is DDPM's t = 1, see ``jaxdiff.schedules``); the seed
  feeds the float t/T with t in [1, T], so we feed (t + 1) / T: the same numbers.
* GELU is the exact (erf) form, as PyTorch's ``nn.GELU()`` default.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_GROUPS = 8  # the seed's GroupNorm(8, ...) in up0 and out; reused where it had BatchNorm
NORM_EPSILON = 1e-5  # PyTorch's GroupNorm/BatchNorm default


def _gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)


class ResidualConvBlock(nn.Module):
    """Two (conv3x3, GroupNorm, GELU) layers; with ``is_res``, (shortcut(x) + h) / 1.414.

    The shortcut is the identity when channels match, else a learned 1x1 conv. Dividing by
    1.414 ~ sqrt(2) keeps the variance of the sum of two unit-variance branches near 1.
    (B, H, W, C_in) -> (B, H, W, features).
    """

    features: int
    is_res: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = dict(kernel_size=(3, 3), padding=1, dtype=self.dtype)
        norm = dict(num_groups=NORM_GROUPS, epsilon=NORM_EPSILON, dtype=self.dtype)
        h = nn.Conv(self.features, name="conv1", **conv)(x)
        h = _gelu(nn.GroupNorm(name="norm1", **norm)(h))
        h = nn.Conv(self.features, name="conv2", **conv)(h)
        h = _gelu(nn.GroupNorm(name="norm2", **norm)(h))
        if not self.is_res:
            return h
        if x.shape[-1] == self.features:
            shortcut = x
        else:
            shortcut = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="shortcut")(x)
        return (shortcut + h) / 1.414


class UnetDown(nn.Module):
    """Two ResidualConvBlocks, then 2x2 max-pool: (B, H, W, C) -> (B, H/2, W/2, features)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResidualConvBlock(self.features, dtype=self.dtype, name="res1")(x)
        x = ResidualConvBlock(self.features, dtype=self.dtype, name="res2")(x)
        return nn.max_pool(x, (2, 2), strides=(2, 2))


class UnetUp(nn.Module):
    """concat(x, skip), 2x2 stride-2 ConvTranspose, two ResidualConvBlocks.

    (B, H, W, C_x), (B, H, W, C_skip) -> (B, 2H, 2W, features).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = jnp.concatenate([x, skip], axis=-1)
        x = nn.ConvTranspose(
            self.features, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype, name="up"
        )(x)
        x = ResidualConvBlock(self.features, dtype=self.dtype, name="res1")(x)
        return ResidualConvBlock(self.features, dtype=self.dtype, name="res2")(x)


class EmbedFC(nn.Module):
    """Dense, GELU, Dense: (B, D_in) -> (B, features)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _gelu(nn.Dense(self.features, dtype=self.dtype, name="dense1")(x))
        return nn.Dense(self.features, dtype=self.dtype, name="dense2")(x)


class ContextUnet(nn.Module):
    """The sprites seed's UNet; ``apply(variables, x, t, cond)`` maps (B, h, h, C) to (B, h, h, C').

    Attributes:
      num_timesteps: T of the schedule; the int timestep t in [0, T) enters as (t + 1) / T,
        the seed's t/T for its t in [1, T]. Must equal the schedule's T (the seed: 500).
      n_feat: base channel count n (the seed: 64 for sprites; 256 for MNIST in minDiffusion).
        Must be divisible by 8 (GroupNorm(8)).
      n_cfeat: size of the float context vector; also the number of classes for int labels,
        so ``context_dim == num_classes == n_cfeat`` (the sprites' 5 one-hot categories:
        hero, non-hero, food, spell, side-facing).
      height: image height = width h; must be divisible by 4 (two 2x poolings) and equal the
        input's H and W (the ``up0`` kernel is h/4 wide).
      out_channels: output channels; None means the input's.
      dtype: computation dtype (params are float32; the output is float32).
    """

    num_timesteps: int = 500
    n_feat: int = 64
    n_cfeat: int = 5
    height: int = 16
    out_channels: int | None = None
    dtype: Any = jnp.float32

    @property
    def num_classes(self) -> int:
        """Int labels are one-hot encoded to n_cfeat; label n_cfeat (the null label) -> zeros."""
        return self.n_cfeat

    @property
    def context_dim(self) -> int:
        """Size D of a float context (B, D); the null context is zeros."""
        return self.n_cfeat

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: Any = None, *, train: bool = False
    ) -> jax.Array:
        """x: (B, h, h, C) float; t: (B,) int timesteps in [0, T); cond: None (zero context,
        the unconditional case), (B, n_cfeat) float context, (B,) int labels in
        [0, n_cfeat] (one-hot; n_cfeat is null), or a dict with 'context' or 'label'
        ('hint' is ignored). No dropout, so ``train`` changes nothing.
        Returns (B, h, h, out_channels or C) float32."""
        del train
        batch, height, width, channels = x.shape
        self._check_shapes(height, width)
        n = self.n_feat
        context = self._context(cond, batch=batch).astype(self.dtype)
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        t_in = ((t.astype(jnp.float32) + 1.0) / self.num_timesteps)[:, None].astype(self.dtype)

        x = x.astype(self.dtype)
        x = ResidualConvBlock(n, is_res=True, dtype=self.dtype, name="init_conv")(x)
        down1 = UnetDown(n, dtype=self.dtype, name="down1")(x)  # (B, h/2, h/2, n)
        down2 = UnetDown(2 * n, dtype=self.dtype, name="down2")(down1)  # (B, h/4, h/4, 2n)
        hidden = _gelu(jnp.mean(down2, axis=(1, 2), keepdims=True))  # (B, 1, 1, 2n)

        def embed(features: int, inputs: jax.Array, name: str) -> jax.Array:
            out = EmbedFC(features, dtype=self.dtype, name=name)(inputs)
            return out[:, None, None, :]  # broadcast over H, W

        cemb1 = embed(2 * n, context, "contextembed1")
        temb1 = embed(2 * n, t_in, "timeembed1")
        cemb2 = embed(n, context, "contextembed2")
        temb2 = embed(n, t_in, "timeembed2")

        side = self.height // 4
        up1 = nn.ConvTranspose(
            2 * n,
            (side, side),
            strides=(side, side),
            padding="VALID",
            dtype=self.dtype,
            name="up0_conv",
        )(hidden)
        up1 = nn.relu(self._norm("up0_norm")(up1))  # (B, h/4, h/4, 2n)
        up2 = UnetUp(n, dtype=self.dtype, name="up1")(cemb1 * up1 + temb1, down2)
        up3 = UnetUp(n, dtype=self.dtype, name="up2")(cemb2 * up2 + temb2, down1)

        out = jnp.concatenate([up3, x], axis=-1)
        out = nn.Conv(n, (3, 3), padding=1, dtype=self.dtype, name="out_conv1")(out)
        out = nn.relu(self._norm("out_norm")(out))
        out = nn.Conv(
            self.out_channels or channels, (3, 3), padding=1, dtype=self.dtype, name="out_conv2"
        )(out)
        return out.astype(jnp.float32)

    def _norm(self, name: str) -> nn.GroupNorm:
        return nn.GroupNorm(NORM_GROUPS, epsilon=NORM_EPSILON, dtype=self.dtype, name=name)

    def _check_shapes(self, height: int, width: int) -> None:
        if self.height % 4:
            raise ValueError(
                f"ContextUnet needs a height divisible by 4 (two 2x poolings), got "
                f"height={self.height}; use e.g. 16, 20, 24 or 28"
            )
        if (height, width) != (self.height, self.height):
            raise ValueError(
                f"ContextUnet(height={self.height}) needs {self.height}x{self.height} images, got "
                f"{height}x{width}; set model.height to the image size"
            )
        if self.n_feat % NORM_GROUPS:
            raise ValueError(
                f"ContextUnet needs n_feat divisible by {NORM_GROUPS} (GroupNorm), "
                f"got {self.n_feat}"
            )

    def _context(self, cond: Any, *, batch: int) -> jax.Array:
        """The (B, n_cfeat) float context of any accepted cond (see ``__call__``)."""
        if isinstance(cond, dict):
            picked = [k for k in ("context", "label") if cond.get(k) is not None]
            if len(picked) > 1:
                raise ValueError(
                    "ContextUnet takes one of cond['context'] or cond['label'], got both; "
                    "one-hot the labels into the context yourself if you want a mix"
                )
            cond = cond[picked[0]] if picked else None
        if cond is None:
            return jnp.zeros((batch, self.n_cfeat), jnp.float32)
        cond = jnp.asarray(cond)
        if jnp.issubdtype(cond.dtype, jnp.integer):
            if cond.shape != (batch,):
                raise ValueError(f"int labels must have shape ({batch},), got {cond.shape}")
            # one_hot gives an all-zero row for the out-of-range null label n_cfeat.
            return jax.nn.one_hot(cond, self.n_cfeat, dtype=jnp.float32)
        if cond.shape != (batch, self.n_cfeat):
            raise ValueError(
                f"float context must have shape ({batch}, n_cfeat={self.n_cfeat}), got "
                f"{cond.shape}; set model.n_cfeat to the context size"
            )
        return cond.astype(jnp.float32)
