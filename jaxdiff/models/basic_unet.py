"""The minimal UNet of the "Diffusion from scratch" seed (HF diffusion course, unit 1).

Hugging Face diffusion-models-class, unit 1, "Diffusion Models from Scratch", ``BasicUNet``:
three 5x5 convs down (32, 64, 64 channels) with a 2x2 max-pool after the first two, three
5x5 convs up (64, 32, out) with x2 nearest-neighbour upsampling before the last two, the
upsampled features *added* to the matching down activation (not concatenated), and SiLU
after every conv. For in = out = 1 it has 309,057 parameters, the course's count::

    x (H, W, C) -> conv 32 -> pool -> conv 64 -> pool -> conv 64          (H/4, W/4, 64)
      -> conv 64 -> up + skip(64 @ H/2) -> conv 32 -> up + skip(32 @ H) -> conv out

It is the model of the corruption baseline (``jaxdiff.losses`` / ``samplers.corruption``),
which mixes the image with noise by a random amount and asks the net for the clean image
*without* telling it the amount: the model does not condition on the noise level, so ``t``
and ``cond`` are accepted (the common model signature) and ignored.

``final_activation``: the course also applies SiLU to the output conv. Its data is in
[0, 1], where that is harmless; SiLU is bounded below by about -0.28, so on our [-1, 1]
images the net could never output the background value -1. The output is therefore linear
by default; ``final_activation=True`` gives the course's exact network (same parameters).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DOWN_CHANNELS = (32, 64, 64)
UP_CHANNELS = (64, 32)  # then out_channels


class BasicUNet(nn.Module):
    """The course's BasicUNet; ``apply(variables, x, t, cond)`` maps (B, H, W, C) to (B, H, W, C').

    Attributes:
      out_channels: output channels; None means the input's (the course: in = out = 1).
      final_activation: SiLU after the output conv too, as in the course (see module doc).
      dtype: computation dtype (params are float32; the output is float32).
    """

    out_channels: int | None = None
    final_activation: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array | None = None, cond: Any = None, *, train: bool = False
    ) -> jax.Array:
        """x: (B, H, W, C) float with H, W divisible by 4. t, cond, train: ignored (the
        corruption baseline does not condition on the noise level; no dropout).
        Returns (B, H, W, out_channels or C) float32."""
        del t, cond, train
        _, height, width, channels = x.shape
        if height % 4 or width % 4:
            raise ValueError(
                f"BasicUNet pools twice by 2, so H and W must be divisible by 4, got "
                f"{height}x{width}; pad or resize the images (e.g. 28x28 MNIST works)"
            )
        conv = dict(kernel_size=(5, 5), padding=2, dtype=self.dtype)
        h = x.astype(self.dtype)
        skips = []
        for i, features in enumerate(DOWN_CHANNELS):
            h = nn.silu(nn.Conv(features, name=f"down_{i}", **conv)(h))
            if i < len(DOWN_CHANNELS) - 1:
                skips.append(h)
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
        up_channels = (*UP_CHANNELS, self.out_channels or channels)
        for i, features in enumerate(up_channels):
            if i > 0:
                # nn.Upsample(scale_factor=2) is nearest-neighbour: repeat rows and columns.
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2) + skips.pop()
            h = nn.Conv(features, name=f"up_{i}", **conv)(h)
            if i < len(up_channels) - 1 or self.final_activation:
                h = nn.silu(h)
        return h.astype(jnp.float32)
