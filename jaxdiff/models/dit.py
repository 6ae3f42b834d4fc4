"""Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into ``patch_size x patch_size`` patches, each linearly embedded into a token
(sec. 3.2, "Patchify"), plus a fixed 2-D sin-cos position embedding. The tokens go through
``depth`` transformer blocks conditioned by adaLN-Zero (sec. 3.2, fig. 3): a vector
``c = embed(t) + embed(label) + embed(context)`` regresses per-block shift/scale/gate values,
and the regressing layer starts at zero so every block starts as the identity. A final
adaLN-modulated linear head, also zero-initialised, maps each token back to a patch; the
model therefore outputs exactly zero at initialisation.

Mirrors facebookresearch/DiT ``models.py`` (initialisers included), except that the class
label is never dropped here (classifier-free-guidance dropout happens in the loss, see
``jaxdiff.conditioning.drop_cond``). With ``learn_sigma`` the output has a second half of
channels, the interpolation weights v of the learned variance (Nichol & Dhariwal 2021,
eq. 15), after the eps half. ``freq_shift`` and ``mlp_norm_eps`` take diffusers'
``DiTTransformer2DModel`` values (1 and 1e-5) when its weights are loaded
(``jaxdiff.pretrained.load_diffusers_dit``).

Presets (table 1): ``DiT(**dit_config("S", patch_size=2), num_classes=10)`` is DiT-S/2.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import matmul
from jaxdiff.attention import dot_product_attention
from jaxdiff.models.layers import split_cond, timestep_embedding

# Table 1 of the paper: depth, hidden size, heads.
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)

# Initialisers of the reference ``DiT.initialize_weights``.
_xavier = nn.initializers.xavier_uniform()
# The reference initialises the patch conv as a Linear over the flattened (p*p*C) patch, so
# fan_in is p*p*C and fan_out is hidden (JAX's conv default would multiply fan_out by p*p).
_xavier_patch = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
_normal_002 = nn.initializers.normal(stddev=0.02)
_zeros = nn.initializers.zeros


def dit_config(size: str, *, patch_size: int = 2) -> dict[str, int]:
    """The DiT attributes of a paper preset, e.g. ``dit_config("XL", patch_size=2)`` is DiT-XL/2.

    Returns a dict with ``depth``, ``hidden_size``, ``num_heads`` and ``patch_size``, ready
    for ``DiT(**...)`` or ``config.model.update(...)``.
    """
    if size not in DIT_SIZES:
        raise ValueError(f"DiT size must be one of {sorted(DIT_SIZES)}, got {size!r}")
    if patch_size not in PATCH_SIZES:
        raise ValueError(f"DiT patch_size must be one of {PATCH_SIZES}, got {patch_size!r}")
    return dict(DIT_SIZES[size], patch_size=patch_size)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p * W/p, p*p*C) tokens, row-major over patches.

    Each token flattens its patch in (row, column, channel) order, the order in which a conv
    kernel of shape (p, p, C, D) is flattened, so the patch-embedding conv equals a Dense
    layer on these tokens.
    """
    b, h, w, c = x.shape
    p = patch_size
    x = x.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, h, w, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, *, height: int, width: int, patch_size: int) -> jax.Array:
    """(B, H/p * W/p, p*p*C) -> (B, H, W, C); the inverse of :func:`patchify`."""
    b, _, d = tokens.shape
    p = patch_size
    c = d // (p * p)
    h, w = height // p, width // p
    x = tokens.reshape(b, h, w, p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, h, p, w, p, C)
    return x.reshape(b, height, width, c)


def sincos_pos_embed_2d(embed_dim: int, grid_height: int, grid_width: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding, (grid_height * grid_width, embed_dim) float32.

    As MAE's/DiT's ``get_2d_sincos_pos_embed`` (square grids there): the first half of the
    channels encodes the patch column, the second half the patch row; each half is
    ``[sin(pos * omega), cos(pos * omega)]`` with ``omega_i = 10000^(-i / (embed_dim/4))``.
    Tokens are ordered row-major, as :func:`patchify` orders them.
    """
    if embed_dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs embed_dim % 4 == 0, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(
        np.arange(grid_height, dtype=np.float64),
        np.arange(grid_width, dtype=np.float64),
        indexing="ij",
    )

    def embed_1d(pos):
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1).astype(np.float32)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x * (1 + scale) + shift, with (B, D) shift/scale broadcast over tokens."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _dense_kwargs(dtype: Any) -> dict[str, Any]:
    """nn.Dense settings of every DiT linear layer: compute in ``dtype``, float32 params,
    zero biases (the reference's init), and ``matmul.dot_general`` (fast CPU weight grads)."""
    return dict(dtype=dtype, param_dtype=jnp.float32, bias_init=_zeros,
                dot_general=matmul.dot_general)


def _layer_norm(eps: float = 1e-6) -> nn.LayerNorm:
    # No affine parameters: adaLN supplies scale and shift. float32 for stability under bf16.
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, dtype=jnp.float32)


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (fig. 3, right): tokens (B, N, D), c (B, D) -> (B, N, D).

    The residual stream is kept in float32 (the sum of many bf16 increments would lose
    precision); attention and MLP matmuls run in ``dtype``.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    mlp_norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        dense = _dense_kwargs(self.dtype)
        d, heads = self.hidden_size, self.num_heads
        # adaLN-Zero: the regression of the six modulation vectors starts at zero, so the
        # gates are zero and the block is the identity at initialisation (sec. 3.2).
        mod = nn.Dense(6 * d, kernel_init=_zeros, name="adaLN_modulation", **dense)(nn.silu(c))
        mod = mod.astype(jnp.float32)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)

        h = _modulate(_layer_norm()(x), shift_msa, scale_msa)
        qkv = nn.Dense(3 * d, kernel_init=_xavier, name="qkv", **dense)(h)
        q, k, v = jnp.split(qkv.reshape(*qkv.shape[:2], 3 * heads, d // heads), 3, axis=2)
        # Softmax in float32; cuDNN/XLA kernels on GPU, cache-sized groups on CPU.
        attn = dot_product_attention(q, k, v).reshape(qkv.shape[:2] + (d,))
        attn = nn.Dense(d, kernel_init=_xavier, name="proj", **dense)(attn)
        x = x + gate_msa[:, None, :] * attn.astype(jnp.float32)

        h = _modulate(_layer_norm(self.mlp_norm_eps)(x), shift_mlp, scale_mlp)
        h = nn.Dense(int(d * self.mlp_ratio), kernel_init=_xavier, name="fc1", **dense)(h)
        h = nn.gelu(h, approximate=True)
        h = nn.Dense(d, kernel_init=_xavier, name="fc2", **dense)(h)
        return x + gate_mlp[:, None, :] * h.astype(jnp.float32)


class DiT(nn.Module):
    """Diffusion Transformer; ``apply(variables, x, t, cond)`` maps (B, H, W, C) to (B, H, W, C').

    Attributes:
      patch_size: p; H and W must be multiples of p. The paper uses 2, 4, 8.
      hidden_size, depth, num_heads, mlp_ratio: transformer sizes (see :func:`dit_config`).
      num_classes: number of class labels, or None for no label input. The embedding table
        has ``num_classes + 1`` rows; the last is the null label of classifier-free guidance.
      context_dim: size D of a float context vector (B, D) added to the conditioning vector
        through a Dense layer, or None for no context. Zeros is the null context.
      out_channels: output channels; None means the input's.
      learn_sigma: twice ``out_channels`` outputs, the learned-variance half last.
      frequency_embedding_size: size of the sinusoidal timestep features fed to the t-MLP.
      freq_shift: the sinusoid's frequencies are 10000^(-k / (half - freq_shift)): 0 in the
        DiT paper's code, 1 in diffusers' DiTTransformer2DModel.
      mlp_norm_eps: epsilon of the LayerNorm before each MLP (1e-6; diffusers' 1e-5).
      dtype: computation dtype (params are float32; LayerNorm and softmax run in float32;
        the output is float32).
      remat: rematerialise each block's activations in the backward pass (less memory, about
        one more forward pass of compute).
    """

    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    context_dim: int | None = None
    out_channels: int | None = None
    frequency_embedding_size: int = 256
    dtype: Any = jnp.float32
    remat: bool = False
    learn_sigma: bool = False
    freq_shift: float = 0.0
    mlp_norm_eps: float = 1e-6

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: Any = None, *, train: bool = False
    ) -> jax.Array:
        """x: (B, H, W, C) float; t: (B,) int timesteps; cond: None, (B,) int labels,
        (B, D) float context, or a dict with 'label' and/or 'context' (a 'hint' entry is for
        ControlNet and ignored here). ``train`` is accepted for the common model signature;
        DiT has no dropout. Returns (B, H, W, out_channels) float32."""
        del train
        b, height, width, channels = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"DiT needs image height and width divisible by patch_size={p}, got "
                f"{height}x{width}; pick a patch_size that divides both or resize the images"
            )
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"DiT hidden_size={self.hidden_size} must be divisible by num_heads="
                f"{self.num_heads} and by 4 (for the 2-D sin-cos position embedding)"
            )
        out_channels = (self.out_channels or channels) * (2 if self.learn_sigma else 1)
        dense = _dense_kwargs(self.dtype)

        # Patchify (sec. 3.2): a conv with kernel = stride = p is a Dense layer per patch.
        tokens = nn.Conv(
            self.hidden_size, (p, p), strides=(p, p), padding="VALID",
            kernel_init=_xavier_patch, name="x_embedder", dtype=self.dtype,
            param_dtype=jnp.float32, bias_init=_zeros,
        )(x.astype(self.dtype))
        tokens = tokens.reshape(b, -1, self.hidden_size).astype(jnp.float32)
        # Fixed, not learned: a trace-time constant, so any image size works.
        tokens = tokens + sincos_pos_embed_2d(self.hidden_size, height // p, width // p)

        c = self._conditioning(t, cond, batch=b)

        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = block(
                self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.mlp_norm_eps,
                name=f"blocks_{i}",
            )(tokens, c)

        # Final layer: adaLN (shift, scale) then a zero-initialised linear head, so the
        # model's output is exactly zero at initialisation.
        mod = nn.Dense(
            2 * self.hidden_size, kernel_init=_zeros, name="final_adaLN_modulation", **dense
        )(nn.silu(c))
        shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
        tokens = _modulate(_layer_norm()(tokens), shift, scale)
        tokens = nn.Dense(
            p * p * out_channels, kernel_init=_zeros, name="final_linear", **dense
        )(tokens)
        out = unpatchify(tokens, height=height, width=width, patch_size=p)
        return out.astype(jnp.float32)

    def _conditioning(self, t: jax.Array, cond: Any, *, batch: int) -> jax.Array:
        """The adaLN conditioning vector c = t-MLP(sinusoid(t)) + label emb + context emb, (B, D).

        A model with ``num_classes`` (``context_dim``) always builds its label (context)
        embedding, so the parameter tree does not depend on the ``cond`` given at init; a
        missing label (context) means the null one.
        """
        labels, context = split_cond(
            cond, batch=batch, num_classes=self.num_classes, context_dim=self.context_dim
        )
        dense = _dense_kwargs(self.dtype)

        t_freq = timestep_embedding(
            jnp.asarray(t, jnp.float32), self.frequency_embedding_size,
            freq_shift=self.freq_shift,
        )  # DiT's [cos, sin] order, max period 10000
        c = nn.Dense(self.hidden_size, kernel_init=_normal_002, name="t_mlp_0", **dense)(t_freq)
        c = nn.Dense(self.hidden_size, kernel_init=_normal_002, name="t_mlp_1", **dense)(
            nn.silu(c)
        ).astype(jnp.float32)

        if labels is not None:
            embed = nn.Embed(
                self.num_classes + 1, self.hidden_size, embedding_init=_normal_002,
                param_dtype=jnp.float32, name="y_embedder",
            )
            c = c + embed(labels)
        if context is not None:
            c = c + nn.Dense(
                self.hidden_size, kernel_init=_xavier, name="context_embedder", **dense
            )(context).astype(jnp.float32)
        return c

