"""The loss of a KL-regularised autoencoder (Rombach et al. 2022, sec. 3 and appendix G;
Kingma & Welling 2014): reconstruction plus a small KL to the standard normal prior,

    L = E_q[ |x - D(z)|_p ] + kl_weight * KL(q(z | x) || N(0, I)),   z ~ q(z | x),
    KL = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)   (Kingma & Welling 2014, appendix B),

without the perceptual and adversarial terms of SD's VAE (a small autoencoder of digits
needs neither). Reconstruction is a per-pixel mean (L1: ``"l1"``, or squared: ``"l2"``);
the KL, summed over latent elements and averaged over the batch, is divided by the pixels
per image too, so ``kl_weight`` weighs the two terms per pixel.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.losses import Batch, LossFn, Metrics, batch_image

RECONSTRUCTIONS = ("l1", "l2")


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over all but the batch axis
    (Kingma & Welling 2014, appendix B)."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(-1)


def make_autoencoder_loss(apply_fn: Any, *, kl_weight: float = 1e-3,
                          reconstruction: str = "l1") -> LossFn:
    """``loss_fn(params, batch, key) -> (loss, {'reconstruction', 'kl', 'mse'})`` for
    ``models.autoencoder.AutoencoderKL.apply``; ``key`` draws z from the posterior."""
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got "
                         f"{reconstruction!r}")

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x = batch_image(batch)
        recon, mean, logvar = apply_fn({"params": params}, x, key)
        err = recon - x
        rec = jnp.mean(jnp.abs(err) if reconstruction == "l1" else jnp.square(err))
        kl = jnp.mean(gaussian_kl(mean, logvar))
        loss = rec + kl_weight * kl / x[0].size
        return loss, {"reconstruction": rec, "kl": kl, "mse": jnp.mean(jnp.square(err))}

    return loss_fn
