"""Noise schedules and the algebra of the forward process.

Notation follows Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM):

* ``betas[t]``      beta_t, the variance of the noise added at step t: q(x_t | x_{t-1}) =
                    N(sqrt(1 - beta_t) x_{t-1}, beta_t I)  (DDPM eq. 2).
* ``alphas[t]``     alpha_t = 1 - beta_t, the fraction of signal variance kept by step t.
* ``alpha_bars[t]`` alpha_bar_t = prod_{s<=t} alpha_s, the signal variance kept after t+1
                    steps, so that q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0,
                    (1 - alpha_bar_t) I)  (DDPM eq. 4).

Timesteps are int32 in [0, T): index 0 is the first, least noisy step (DDPM's t=1).

The model may be trained to output eps (the noise), x0 (the clean image) or
v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, "Progressive
Distillation", sec. 4 and appendix D). ``to_x0_eps`` turns any of them into the pair
(x0, eps) that the samplers need, and ``target`` gives what the model should output.
"""

from __future__ import annotations

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")
# The corruption baseline (losses.make_corruption_loss, samplers.corruption) has no discrete
# steps; the amount in [0, 1] is reported to the model on the usual 1000-step integer scale
# so that a time-conditioned model could use it.
CORRUPTION_TIMESTEPS = 1000


@flax.struct.dataclass
class Schedule:
    """Per-step tables of a discrete diffusion process, each of shape (T,), float32.

    A pytree: it can be passed through ``jax.jit`` and closed over by losses and samplers.
    """

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return self.betas.shape[0]


def from_betas(betas: jax.Array) -> Schedule:
    """Builds the alpha tables from betas (DDPM eq. 4: alpha_bar_t = prod_{s<=t} alpha_s)."""
    betas = jnp.asarray(betas, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    alphas = 1.0 - betas
    # cumprod in float64 where available would be more exact; for T <= 4000 float32
    # cumprod matches the closed form to ~1e-6 relative, which the tests check.
    alpha_bars = jnp.cumprod(alphas)
    return Schedule(
        betas=betas.astype(jnp.float32),
        alphas=alphas.astype(jnp.float32),
        alpha_bars=alpha_bars.astype(jnp.float32),
    )


def linear(
    num_timesteps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Schedule:
    """DDPM's linear schedule (sec. 4): betas evenly spaced from beta_start to beta_end.

    The seeds use T=500 (sprites) and T=1000 (MNIST) with 1e-4..0.02.
    """
    _check_T(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"linear schedule needs 0 < beta_start <= beta_end < 1, got "
            f"beta_start={beta_start}, beta_end={beta_end}"
        )
    return from_betas(jnp.linspace(beta_start, beta_end, num_timesteps))


def scaled_linear(
    num_timesteps: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Schedule:
    """Betas whose square roots are evenly spaced, ``beta_t = (sqrt(b0) + t/(T-1) *
    (sqrt(b1) - sqrt(b0)))**2``: Latent Diffusion's schedule (Rombach et al. 2022, the
    "scaled_linear" beta_schedule of diffusers' schedulers, defaults as Stable Diffusion).
    """
    _check_T(num_timesteps)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"scaled_linear schedule needs 0 < beta_start <= beta_end < 1, got "
            f"beta_start={beta_start}, beta_end={beta_end}"
        )
    roots = jnp.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=jnp.float32)
    return from_betas(roots**2)


def cosine(num_timesteps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal 2021, "Improved DDPM", eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2), and
    beta_t = 1 - alpha_bar(t) / alpha_bar(t-1) clipped to ``max_beta`` so that the last
    steps do not become singular.
    """
    _check_T(num_timesteps)
    steps = jnp.arange(num_timesteps + 1, dtype=jnp.float32) / num_timesteps
    f = jnp.cos((steps + s) / (1.0 + s) * jnp.pi / 2.0) ** 2
    alpha_bar = f / f[0]
    betas = jnp.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)
    return from_betas(betas)


def _check_T(num_timesteps: int) -> None:
    if int(num_timesteps) < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")


def per_example(values: jax.Array, *, like: jax.Array) -> jax.Array:
    """Per-example values reshaped to broadcast against ``like``: (B,) -> (B, 1, ..., 1)."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def alpha_sigma(schedule: Schedule, t: jax.Array, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) per example, shaped to
    broadcast against ``like`` and in its dtype. Computed in the table's float32 and cast
    last: in bfloat16, alpha_bar_0 = 0.9999 rounds to 1, which would make sigma_0 zero (no
    noise at small t, and a division by zero for x0-prediction)."""
    ab = per_example(schedule.alpha_bars[jnp.asarray(t, jnp.int32)], like=like)
    return jnp.sqrt(ab).astype(like.dtype), jnp.sqrt(1.0 - ab).astype(like.dtype)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Samples x_t ~ q(x_t | x_0) by reparameterisation (DDPM eq. 4):

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I).

    Shapes: x0 and noise (B, ...), t (B,) int32.
    """
    alpha, sigma = alpha_sigma(schedule, t, x0)
    return alpha * x0 + sigma * noise


def v_from(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The velocity v = alpha_t eps - sigma_t x0 of Salimans & Ho 2022, sec. 4, with
    alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t)."""
    alpha, sigma = alpha_sigma(schedule, t, x0)
    return alpha * eps - sigma * x0


def target(
    schedule: Schedule,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    prediction: Prediction,
) -> jax.Array:
    """What a model trained with ``prediction`` should output for x_t = q_sample(x0, t, noise):
    eps (DDPM eq. 14's simple loss), x0, or v (Salimans & Ho sec. 4)."""
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return v_from(schedule, x0, t, noise)


def to_x0_eps(
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    output: jax.Array,
    prediction: Prediction,
) -> tuple[jax.Array, jax.Array]:
    """Turns a model output into the pair (x0_hat, eps_hat) consistent with x_t.

    * eps: x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)   (inverse of DDPM eq. 4;
      the x0 estimate used in DDIM eq. 12).
    * x0:  eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar).
    * v:   x0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v   (Salimans & Ho, appendix D,
      using alpha^2 + sigma^2 = 1).
    """
    check_prediction(prediction)
    alpha, sigma = alpha_sigma(schedule, t, x_t)
    if prediction == "eps":
        eps = output
        x0 = (x_t - sigma * eps) / alpha
    elif prediction == "x0":
        x0 = output
        eps = (x_t - alpha * x0) / sigma
    else:
        x0 = alpha * x_t - sigma * output
        eps = sigma * x_t + alpha * output
    return x0, eps


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
