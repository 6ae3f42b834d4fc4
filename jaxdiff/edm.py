"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"): the preconditioned denoiser D(x; sigma) built from any jaxdiff model, its
training noise levels, loss weight and loss, and the sampling noise levels.

Noise is added as x = y + sigma n (the variance-exploding form, EDM eq. 2 with s(t) = 1),
and the network F is wrapped as (EDM eq. 7, table 1 "Network and preconditioning")

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),
    c_noise = ln(sigma) / 4,

so F's input and target have unit variance at every sigma. A jaxdiff model is F: it gets
c_in x as its image and c_noise as its float32 (B,) timestep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import conditioning, schedules
from jaxdiff.batches import ApplyFn, Batch, LossFn, Metrics, batch_image, model_cond

SIGMA_DATA = 0.5  # EDM's sigma_data for images in [-1, 1] (table 1)
P_MEAN, P_STD = -1.2, 1.2  # training noise levels: ln sigma ~ N(P_mean, P_std^2) (table 1)
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # sampling noise levels (table 1, eq. 5)

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def preconditioning(
    sigma: jax.Array, *, sigma_data: float = SIGMA_DATA
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(c_skip, c_out, c_in, c_noise) at ``sigma``, EDM table 1 (any shape, float32)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = jnp.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: jax.Array, *, sigma_data: float = SIGMA_DATA) -> jax.Array:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2
    (EDM table 1, "Training"), which makes F's effective loss weight 1 at every sigma."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(
    key: jax.Array, batch_size: int, *, p_mean: float = P_MEAN, p_std: float = P_STD
) -> jax.Array:
    """Training noise levels (B,): ln sigma ~ N(P_mean, P_std^2) (EDM table 1, sec. 5)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (batch_size,), jnp.float32))


def karras_sigmas(
    num_steps: int, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> np.ndarray:
    """EDM eq. 5's time steps, float32 (num_steps + 1,): sigma_i = (sigma_max^(1/rho) +
    i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i < N, then sigma_N = 0
    (k-diffusion's ``get_sigmas_karras``). Built at trace time (static)."""
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return np.append(sigmas, 0.0).astype(np.float32)


def precondition(model_fn: ModelFn, *, sigma_data: float = SIGMA_DATA) -> ModelFn:
    """D(x, sigma, cond) from F = ``model_fn(x, t, cond)`` (EDM eq. 7 with table 1): F sees
    c_in x and the float32 (B,) timestep c_noise; output float32 of x's shape. ``sigma`` is
    (B,) (or a scalar). Wrap a trained model as ``precondition(lambda x, t, c:
    model.apply({'params': params}, x, t, c))``; that is the ``denoise_fn`` of
    ``samplers.edm_heun``."""

    def denoiser(x: jax.Array, sigma: jax.Array, cond: Any) -> jax.Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = (
            schedules.per_example(c, like=x) if i < 3 else c
            for i, c in enumerate(preconditioning(sigma, sigma_data=sigma_data))
        )
        out = model_fn((c_in * x).astype(x.dtype), c_noise, cond).astype(jnp.float32)
        return c_skip * x.astype(jnp.float32) + c_out * out

    return denoiser


def gaussian_denoiser(x: jax.Array, sigma: jax.Array, *, mean: Any, std: Any) -> jax.Array:
    """The exact D(x; sigma) = E[y | y + sigma n = x] of data N(mean, std^2 I):
    mean + std^2 / (std^2 + sigma^2) (x - mean) (EDM eq. 3's minimiser). For tests and
    lessons."""
    sigma = schedules.per_example(jnp.asarray(sigma, jnp.float32), like=x)
    return mean + std**2 / (std**2 + sigma**2) * (x - mean)


def make_edm_loss(
    apply_fn: ApplyFn,
    *,
    sigma_data: float = SIGMA_DATA,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    cond_drop_prob: float = 0.1,
    num_classes: int | None = None,
) -> LossFn:
    """EDM's training loss (eq. 8 with table 1):

    E_{sigma, y, n} lambda(sigma) || D(y + sigma n; sigma, c) - y ||^2,

    ln sigma ~ N(p_mean, p_std^2), D the preconditioned ``apply_fn`` (``precondition``),
    lambda = ``loss_weight``. Classifier-free guidance training as in
    ``losses.make_denoising_loss``: each example's condition becomes the null one with
    probability ``cond_drop_prob``; a batch's 'label' is used only with ``num_classes``.

    Metrics: ``loss`` (weighted) and ``mse_x0`` (the unweighted ||D - y||^2).
    """
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
    if float(sigma_data) <= 0 or float(p_std) <= 0:
        raise ValueError(f"sigma_data and p_std must be > 0, got {sigma_data}, {p_std}")

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        y = batch_image(batch)
        key_sigma, key_noise, key_drop, key_dropout = jax.random.split(key, 4)
        sigma = sample_sigma(key_sigma, y.shape[0], p_mean=p_mean, p_std=p_std)
        noise = jax.random.normal(key_noise, y.shape, jnp.float32)
        x = y + schedules.per_example(sigma, like=y) * noise
        cond = conditioning.drop_cond(
            key_drop, model_cond(batch, num_classes=num_classes), prob=cond_drop_prob,
            num_classes=num_classes,
        )

        def model_fn(x_in, t, c):
            return apply_fn({"params": params}, x_in, t, c, train=True,
                            rngs={"dropout": key_dropout})

        denoised = precondition(model_fn, sigma_data=sigma_data)(x, sigma, cond)
        per_example = jnp.mean(jnp.square(denoised - y), axis=tuple(range(1, y.ndim)))
        loss = jnp.mean(loss_weight(sigma, sigma_data=sigma_data) * per_example)
        return loss, {"loss": loss, "mse_x0": jnp.mean(per_example)}

    return loss_fn
