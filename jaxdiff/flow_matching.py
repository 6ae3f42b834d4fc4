"""Flow matching / rectified flow: the straight interpolant between data and noise, its
velocity, the time distributions of training, and the loss.

Convention (Esser et al. 2024, "Scaling Rectified Flow Transformers" (SD3), eq. 2 and sec.
3.1; diffusers' ``FlowMatchEulerDiscreteScheduler``): t in [0, 1], t = 0 is data and t = 1
is pure noise,

    x_t = (1 - t) x0 + t eps,        v = dx_t / dt = eps - x0,

and a sampler integrates dx/dt = v(x, t) from t = 1 down to t = 0 (Liu et al. 2022,
"Flow Straight and Fast"; Lipman et al. 2023, "Flow Matching for Generative Modeling"). The
model sees ``TIME_SCALE * t`` (1000 t) as its float timestep, so a UNet or DiT built for
1000-step schedules takes it unchanged (the diffusers convention, ``timesteps = sigmas *
num_train_timesteps``).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxdiff import conditioning, schedules
from jaxdiff.batches import ApplyFn, Batch, LossFn, Metrics, batch_image, model_cond

TimeSampling = Literal["uniform", "logit_normal"]
TIME_SAMPLINGS = ("uniform", "logit_normal")
TIME_SCALE = 1000.0  # the model's timestep is 1000 t


def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t eps (SD3 eq. 2 with a_t = 1 - t, b_t = t); t is (B,) or a scalar."""
    t = schedules.per_example(jnp.asarray(t, jnp.float32), like=x0)
    return (1.0 - t) * x0 + t * eps


def velocity(x0: jax.Array, eps: jax.Array) -> jax.Array:
    """The conditional velocity d x_t / dt = eps - x0: the regression target (SD3 eq. 3)."""
    return eps - x0


def sample_time(
    key: jax.Array,
    batch_size: int,
    time_sampling: TimeSampling = "uniform",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> jax.Array:
    """t (B,) float32 in (0, 1): U(0, 1), or SD3's logit-normal (sec. 3.1, eq. 19),
    t = sigmoid(u), u ~ N(logit_mean, logit_std^2), which puts more training weight on the
    middle of the path (SD3's best setting is mean 0, std 1)."""
    if time_sampling == "uniform":
        return jax.random.uniform(key, (batch_size,), jnp.float32)
    if time_sampling == "logit_normal":
        u = logit_mean + logit_std * jax.random.normal(key, (batch_size,), jnp.float32)
        return jax.nn.sigmoid(u)
    raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")


def gaussian_velocity(x: jax.Array, t: jax.Array, *, mean: Any, std: Any) -> jax.Array:
    """The exact (marginal) velocity E[eps - x0 | x_t = x] when the data law is
    N(mean, std^2 I): with V(t) = (1 - t)^2 std^2 + t^2,

        v(x, t) = (t - (1 - t) std^2) / V(t) (x - (1 - t) mean) - mean.

    Its flow carries x_1 to x_0 = mean + std x_1 along x_t = (1 - t) mean + sqrt(V(t)) x_1
    (the ODE of Lipman et al. 2023, eq. 1 with this marginal field). For tests and lessons.
    """
    t = schedules.per_example(jnp.asarray(t, jnp.float32), like=x)
    var = (1.0 - t) ** 2 * std**2 + t**2
    return (t - (1.0 - t) * std**2) / var * (x - (1.0 - t) * mean) - mean


def make_flow_matching_loss(
    apply_fn: ApplyFn,
    *,
    time_sampling: TimeSampling = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    cond_drop_prob: float = 0.1,
    num_classes: int | None = None,
) -> LossFn:
    """The conditional flow matching loss (Lipman et al. 2023, eq. 23; SD3 eq. 3):

    E_{t, x0, eps} || model(x_t, 1000 t, c) - (eps - x0) ||^2,  x_t = (1 - t) x0 + t eps,

    with t from ``sample_time`` (``time_sampling``: "uniform" or SD3's "logit_normal" with
    ``logit_mean``, ``logit_std``). Classifier-free guidance training as in
    ``losses.make_denoising_loss`` (Ho & Salimans 2022, alg. 1): each example's condition
    becomes the null one with probability ``cond_drop_prob``; a batch's 'label' is used only
    when ``num_classes`` is given. The model gets a float32 (B,) timestep 1000 t and its
    output (cast to float32) is the velocity.

    Metrics: ``loss`` and ``mse_v`` (the same number: no weighting).
    """
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
    if float(logit_std) <= 0:
        raise ValueError(f"logit_std must be > 0, got {logit_std}")

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x0 = batch_image(batch)
        key_t, key_noise, key_drop, key_dropout = jax.random.split(key, 4)
        t = sample_time(
            key_t, x0.shape[0], time_sampling, logit_mean=logit_mean, logit_std=logit_std
        )
        eps = jax.random.normal(key_noise, x0.shape, jnp.float32)
        cond = conditioning.drop_cond(
            key_drop, model_cond(batch, num_classes=num_classes), prob=cond_drop_prob,
            num_classes=num_classes,
        )
        output = apply_fn(
            {"params": params}, interpolate(x0, eps, t), TIME_SCALE * t, cond, train=True,
            rngs={"dropout": key_dropout},
        ).astype(jnp.float32)
        loss = jnp.mean(jnp.square(output - velocity(x0, eps)))
        return loss, {"loss": loss, "mse_v": loss}

    return loss_fn
