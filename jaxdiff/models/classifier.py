"""A small CNN image classifier whose penultimate activations are the evaluation "features".

Sample quality is measured like FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium", sec. 3), but in the feature space of a
classifier trained on the dataset itself instead of Inception-v3 on ImageNet: Inception's
features say little about 8x8 or 28x28 grey digits, and a dataset-specific classifier also
gives the class-conditional accuracy of a conditional sampler.

Architecture: for each entry of ``channels`` a block ``conv3x3 -> GroupNorm -> relu``, with
2x2 average pooling between blocks (one conv per resolution keeps training to seconds on a
CPU, and is already >95% accurate on digits); then a global average pool, a
``feature_dim``-wide dense layer (the features), relu, and a dense logits head. GroupNorm
rather than BatchNorm so the model has no batch statistics: the features of an image do not
depend on the batch it is evaluated in.

The features are the dense layer's output *before* the relu: pre-activations are dense and
roughly Gaussian, whereas post-relu features have dead units that make the feature
covariance singular.

Noise-conditioned variant (classifier guidance, Dhariwal & Nichol 2021, "Diffusion Models
Beat GANs", sec. 4): with ``num_timesteps`` set, the classifier takes the int timestep ``t``
(B,) of a noisy input x_t and adds a learned per-timestep embedding to each block's
activations. The evaluation classifier leaves ``num_timesteps=None`` and is called without t.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Classifier(nn.Module):
    """CNN classifier; ``apply(variables, x, t=None, cond=None, return_features=...)``.

    Attributes:
      num_classes: number of logits.
      channels: conv width of each resolution level (the input is halved between levels).
      feature_dim: width of the penultimate (feature) layer.
      num_groups: GroupNorm groups (clipped to divide each width).
      num_timesteps: None for a clean-image classifier; T for a noise-conditioned one that
        takes timesteps t in [0, T).
      dtype: computation dtype; params and outputs are float32.
    """

    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    num_groups: int = 8
    num_timesteps: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array | None = None,
        cond: Any = None,
        *,
        train: bool = False,
        return_features: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Classifies images.

        Args:
          x: (B, H, W, C) float32 images in [-1, 1] (noisy x_t for a noise-conditioned model).
          t: (B,) int32 timesteps; required iff ``num_timesteps`` is set.
          cond: must be None; there so that the model call contract ``apply(variables, x_t,
            t, cond)`` (used by experiments.train's init and restore) fits the classifier.
          train: unused (no dropout or batch statistics); kept for the model call contract.
          return_features: also return the penultimate features.

        Returns:
          logits (B, num_classes), or ``(logits, features)`` with features (B, feature_dim),
          all float32.
        """
        del train
        if cond is not None:
            raise ValueError("Classifier takes no condition; call it with cond=None")
        if (self.num_timesteps is None) != (t is None):
            raise ValueError(
                "Classifier: pass the timesteps t exactly when num_timesteps is set "
                f"(num_timesteps={self.num_timesteps}, t {'given' if t is not None else 'None'})"
            )
        h = x.astype(self.dtype)
        for level, width in enumerate(self.channels):
            if level > 0:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            h = nn.Conv(width, (3, 3), dtype=self.dtype, name=f"conv_{level}")(h)
            groups = _groups(width, self.num_groups)
            h = nn.GroupNorm(num_groups=groups, dtype=self.dtype, name=f"norm_{level}")(h)
            if t is not None:
                # One learned vector per (discrete) timestep: exact for t in [0, T), and a
                # noise-conditioned classifier sees every t during training.
                time_embed = nn.Embed(self.num_timesteps, width, name=f"time_embed_{level}")
                h = h + time_embed(t).astype(self.dtype)[:, None, None, :]
            h = nn.relu(h)
        h = jnp.mean(h, axis=(1, 2))  # global average pool: any input resolution works
        features = nn.Dense(self.feature_dim, dtype=self.dtype, name="features")(h)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(nn.relu(features))
        logits = logits.astype(jnp.float32)
        if return_features:
            return logits, features.astype(jnp.float32)
        return logits


def _groups(width: int, num_groups: int) -> int:
    """The largest group count <= num_groups that divides width."""
    groups = min(num_groups, width)
    while width % groups:
        groups -= 1
    return groups
