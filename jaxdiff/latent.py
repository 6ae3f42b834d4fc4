"""Latent diffusion (Rombach et al. 2022): sample in an autoencoder's latent space, decode
to images. The diffusion model sees latents scaled to about unit variance
(``models.autoencoder.scale_latents``); ``decode`` unscales them and runs the decoder.

A DiT with a learned variance (``learn_sigma``) outputs [eps, v]: classifier-free guidance
combines the eps halves only and keeps the conditional v (``cfg_learned_sigma``, as the
DiT code's ``forward_with_cfg``); DDPM samples with the learned variance, the deterministic
samplers use the eps half (``sample_latents``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import conditioning, guidance, samplers
from jaxdiff.models.autoencoder import AutoencoderKL, unscale_latents
from jaxdiff.schedules import Schedule

STRIDED = ("ddim", "dpm_solver_pp")


def cfg_learned_sigma(denoise_fn: guidance.DenoiseFn, *, guidance_scale: float,
                      num_classes: int | None) -> guidance.DenoiseFn:
    """Ho & Salimans 2022 eq. 6 on the eps half of a [eps, v] output (w = ``guidance_scale``,
    jaxdiff's convention: diffusers' scale s = 1 + w); the v half is the conditional one."""
    if guidance_scale == 0:
        return denoise_fn

    def guided(x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
        null = conditioning.null_cond(cond, num_classes=num_classes)
        out = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                         conditioning.concat_cond(cond, null))
        (eps_c, v_c), (eps_u, _) = (samplers.split_learned(o) for o in jnp.split(out, 2))
        eps = (1.0 + guidance_scale) * eps_c - guidance_scale * eps_u
        return jnp.concatenate([eps, v_c], axis=-1)

    return guided


def sample_latents(
    model: Any, params: Any, schedule: Schedule, key: jax.Array, *, shape: tuple[int, ...],
    cond: Any = None, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
    guidance_scale: float = 0.0, prediction: str = "eps", clip_x0: bool = False,
    variance: str = "posterior", spacing: str = "trailing", keep_every: int = 0,
    initial_noise: jax.Array | None = None,
) -> samplers.Result:
    """Latents (B, h, w, C) from ``model`` (a DiT, ``learn_sigma`` or not): ``sampler``
    "ddpm" (all T steps, with ``variance``; "learned_range" for a learned sigma), "ddim"
    (``steps`` on the ``spacing`` grid, ``eta``) or "dpm_solver_pp"; CFG of scale
    ``guidance_scale`` (w) toward the int labels ``cond``. Not clipped: latents are not in
    [-1, 1], so ``clip_x0`` defaults to False. Jit the caller."""
    learned = bool(getattr(model, "learn_sigma", False))
    num_classes = getattr(model, "num_classes", None)

    def denoise_fn(x, t, c):
        return model.apply({"params": params}, x, t, c)

    if learned:
        denoise_fn = cfg_learned_sigma(denoise_fn, guidance_scale=guidance_scale,
                                       num_classes=num_classes)
    else:
        denoise_fn = guidance.cfg(denoise_fn, guidance_scale=guidance_scale,
                                  num_classes=num_classes)
    options: dict[str, Any] = dict(cond=cond, prediction=prediction, keep_every=keep_every,
                                   clip_x0=clip_x0, initial_noise=initial_noise)
    if sampler == "ddpm":
        if learned != (variance == "learned_range"):
            raise ValueError(f"variance {variance!r} does not fit a model with learn_sigma="
                             f"{learned} (learned_range goes with a learned sigma)")
        return samplers.ddpm(denoise_fn, schedule, key, shape, variance=variance, **options)
    if sampler not in STRIDED:
        raise ValueError(f"latent sampler must be 'ddpm' or one of {STRIDED}, got {sampler!r}")
    eps_only = denoise_fn if not learned else (
        lambda x, t, c: samplers.split_learned(denoise_fn(x, t, c))[0])
    if sampler == "ddim":
        options.update(eta=eta)
    return getattr(samplers, sampler)(eps_only, schedule, key, shape, num_steps=steps,
                                      spacing=spacing, **options)


def decode(vae: AutoencoderKL, vae_params: Any, z: jax.Array) -> jax.Array:
    """Scaled latents (B, h, w, C) -> images (B, h f, w f, C_image) in [-1, 1] (clipped)."""
    z = unscale_latents(z, scaling_factor=vae.scaling_factor, shift_factor=vae.shift_factor)
    images = vae.apply({"params": vae_params}, z, method="decode")
    return jnp.clip(images, -1.0, 1.0)
