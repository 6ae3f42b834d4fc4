"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", alg. 2): a student learns to take in ONE deterministic DDIM step what the
teacher takes in two, so halving rounds turn a many-step sampler into a 4-, 2- or 1-step one.

``make_progressive_distillation_loss`` builds a ``loss_fn(params, batch, key) -> (loss,
metrics)`` like ``losses.make_denoising_loss``; it closes over the frozen teacher's
``denoise_fn``, so the student is an ordinary model trained by ``train.make_train_step`` and
the teacher's params never receive a gradient. The teacher may be classifier-free guided at a
fixed scale (guided distillation, Meng et al. 2023, "On Distillation of Guided Diffusion
Models", stage two), so the distilled student samples without guidance.

Time is the teacher's discrete grid: the student's N steps are ``samplers.timestep_grid(T, N,
"trailing")`` (T/N apart, the last one ending on the clean image), and the teacher's two
steps per student step are the 2N-step grid, which nests in it when 2N divides T.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import conditioning, guidance, schedules
from jaxdiff.losses import ApplyFn, Batch, LossFn, Metrics, batch_image, model_cond
from jaxdiff.samplers import DenoiseFn, alpha_bar_at, ddim_step


def distillation_target(
    teacher_x0,
    schedule: schedules.Schedule,
    z_t: jax.Array,
    t: jax.Array,
    *,
    num_student_steps: int,
) -> jax.Array:
    """The student's x-target of Salimans & Ho alg. 2 for z_t at student-grid timesteps t (B,).

    With t' = t - T/(2N) and t'' = t - T/N (-1: the clean image), two teacher DDIM steps
    z_t -> z_t' -> z_t'' (``teacher_x0(z, t) -> x0``, its x prediction), then

        x_tilde = (z_t'' - sigma_t'' / sigma_t z_t) / (alpha_t'' - sigma_t'' / sigma_t alpha_t),

    the x0 that makes the student's single DDIM step t -> t'' land on z_t''. At t'' = -1
    (sigma = 0) it is z_t'' itself.
    """
    half = schedule.num_timesteps // (2 * int(num_student_steps))
    t_mid, t_end = t - half, t - 2 * half
    ab_t, ab_mid, ab_end = (
        schedules.per_example(alpha_bar_at(schedule, s), like=z_t) for s in (t, t_mid, t_end)
    )
    # Deterministic DDIM (eq. 12, eta = 0), the teacher's two steps.
    z_mid = ddim_step(x_t=z_t, x0=teacher_x0(z_t, t), alpha_bar=ab_t, alpha_bar_prev=ab_mid)
    z_end = ddim_step(
        x_t=z_mid, x0=teacher_x0(z_mid, t_mid), alpha_bar=ab_mid, alpha_bar_prev=ab_end
    )
    ratio = jnp.sqrt(1.0 - ab_end) / jnp.sqrt(1.0 - ab_t)
    return (z_end - ratio * z_t) / (jnp.sqrt(ab_end) - ratio * jnp.sqrt(ab_t))


def make_progressive_distillation_loss(
    apply_fn: ApplyFn,
    teacher_fn: DenoiseFn,
    schedule: schedules.Schedule,
    *,
    num_student_steps: int,
    prediction: schedules.Prediction = "v",
    teacher_prediction: schedules.Prediction = "v",
    teacher_guidance_scale: float = 0.0,
    num_classes: int | None = None,
    cond_drop_prob: float = 0.0,
    clip_x0: bool = True,
) -> LossFn:
    """Salimans & Ho 2022, alg. 2: the loss that distils a teacher's 2N-step DDIM sampler into
    a student's N-step one.

    * x ~ data, k ~ U{1..N}, t = k T/N - 1 (the student's "trailing" grid), eps ~ N(0, I),
      z_t = alpha_t x + sigma_t eps (DDPM eq. 4).
    * x_tilde = ``distillation_target``: two deterministic DDIM steps of the teacher
      (``teacher_fn(x_t, t, cond)``, output of kind ``teacher_prediction``; classifier-free
      guided with w = ``teacher_guidance_scale`` when > 0, Ho & Salimans eq. 6), with its x
      prediction clipped to [-1, 1] when ``clip_x0`` (as ``samplers.ddim`` samples). No
      gradient flows into the teacher (``jax.lax.stop_gradient``).
    * loss = max(SNR_t, 1) ||x_hat_student - x_tilde||^2, the paper's "truncated SNR"
      weighting (sec. 4: max(||x - x_hat||^2, ||eps - eps_hat||^2)); the student's x
      prediction comes from its output through ``schedules.to_x0_eps`` (v-parameterisation
      by default, sec. 4, whose x error stays bounded as SNR -> 0).

    ``cond_drop_prob`` drops the condition of student and teacher alike (the teacher's guided
    output at the null condition is its unconditional one). T must be divisible by 2N.

    Metrics: ``loss`` and ``mse_x0`` (the unweighted squared x error).
    """
    schedules.check_prediction(prediction)
    schedules.check_prediction(teacher_prediction)
    T, n = schedule.num_timesteps, int(num_student_steps)
    if n < 1 or T % (2 * n):
        raise ValueError(
            f"num_student_steps={num_student_steps}: 2 x the student's steps must divide the "
            f"schedule's T={T}, so that both grids fall on the teacher's timesteps"
        )
    if teacher_guidance_scale:
        teacher_fn = guidance.cfg(
            teacher_fn, guidance_scale=teacher_guidance_scale, num_classes=num_classes
        )

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x = batch_image(batch)
        key_t, key_noise, key_drop, key_dropout = jax.random.split(key, 4)
        k = jax.random.randint(key_t, (x.shape[0],), 1, n + 1, jnp.int32)
        t = k * (T // n) - 1
        z_t = schedules.q_sample(schedule, x, t, jax.random.normal(key_noise, x.shape))
        cond = conditioning.drop_cond(
            key_drop, model_cond(batch, num_classes=num_classes), prob=cond_drop_prob,
            num_classes=num_classes,
        )

        def teacher_x0(z, s):
            x0, _ = schedules.to_x0_eps(
                schedule, z, s, teacher_fn(z, s, cond).astype(jnp.float32), teacher_prediction
            )
            return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0

        target = jax.lax.stop_gradient(
            distillation_target(teacher_x0, schedule, z_t, t, num_student_steps=n)
        )
        output = apply_fn(
            {"params": params}, z_t, t, cond, train=True, rngs={"dropout": key_dropout}
        ).astype(jnp.float32)
        x_hat, _ = schedules.to_x0_eps(schedule, z_t, t, output, prediction)
        ab = schedule.alpha_bars[t]
        weight = jnp.maximum(ab / (1.0 - ab), 1.0)
        per_example = jnp.mean(jnp.square(x_hat - target), axis=tuple(range(1, x.ndim)))
        loss = jnp.mean(weight * per_example)
        return loss, {"loss": loss, "mse_x0": jnp.mean(per_example)}

    return loss_fn
