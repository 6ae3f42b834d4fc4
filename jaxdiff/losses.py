"""Training losses: pure builders that return ``loss_fn(params, batch, key) -> (loss, metrics)``.

Each builder closes over the model's ``apply`` (a Flax ``Module.apply``) and whatever tables
the loss needs; the returned ``loss_fn`` is pure, so ``jax.value_and_grad`` and ``jax.jit``
can take it as is (``jaxdiff.train.make_train_step``). ``params`` is the inner parameter
tree: the loss calls ``apply_fn({'params': params}, x_t, t, cond, train=True,
rngs={'dropout': key})``.

A batch is a dict ``{'image': (B, H, W, C) float32 in [-1, 1]}`` plus optionally
``'label'`` (B,) int32, ``'context'`` (B, D) float32 and ``'hint'`` (B, H, W, C') float32.

* ``make_denoising_loss``: DDPM's "simple" loss (Ho et al. 2020, eq. 14) with an eps, x0
  or v target (Salimans & Ho 2022, sec. 4), classifier-free guidance training built in
  (Ho & Salimans 2022, alg. 1).
* ``make_corruption_loss``: the "diffusion from scratch" baseline of the Hugging Face
  diffusion course, unit 1 (mix the image with uniform noise, predict the clean image).

* ``make_noisy_classifier_loss``: cross-entropy of a timestep-conditioned classifier on
  noisy images x_t ~ q(x_t | x_0), the guiding classifier of Dhariwal & Nichol 2021, "Diffusion
  Models Beat GANs", sec. 4 (used by ``guidance.classifier_guidance``).

* ``make_flow_matching_loss`` (``jaxdiff.flow_matching``): the velocity loss of rectified
  flow / flow matching on x_t = (1 - t) x0 + t eps (Lipman et al. 2023; Esser et al. 2024).
* ``make_edm_loss`` (``jaxdiff.edm``): EDM's preconditioned denoiser loss (Karras et al.
  2022, eq. 8 with table 1).

Distillation (Salimans & Ho 2022, alg. 2) follows the same ``loss_fn(params, batch, key)``
contract; it closes over a frozen teacher ``apply``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jaxdiff import conditioning, schedules

# Re-exported (``as``): jd.losses is where every loss and its batch helpers are found.
from jaxdiff.batches import COND_KEYS as COND_KEYS
from jaxdiff.batches import (
    ApplyFn,
    Batch,
    LossFn,
    Metrics,
    batch_image,
    model_cond,
)
from jaxdiff.batches import batch_cond as batch_cond
from jaxdiff.edm import make_edm_loss as make_edm_loss
from jaxdiff.flow_matching import make_flow_matching_loss as make_flow_matching_loss
from jaxdiff.schedules import CORRUPTION_TIMESTEPS

LossWeighting = Literal["none", "min_snr"]
LOSS_WEIGHTINGS = ("none", "min_snr")


def make_denoising_loss(
    apply_fn: ApplyFn,
    schedule: schedules.Schedule,
    *,
    prediction: schedules.Prediction = "eps",
    cond_drop_prob: float = 0.1,
    num_classes: int | None = None,
    loss_weighting: LossWeighting = "none",
    min_snr_gamma: float = 5.0,
) -> LossFn:
    """The denoising loss E_{t, x0, eps} w(t) ||model(x_t, t, c) - target||^2.

    * t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t)
      eps (DDPM eq. 4); the target is eps (DDPM eq. 14, the "simple" loss), x0, or
      v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022, sec. 4), see ``schedules.target``.
    * Classifier-free guidance training (Ho & Salimans 2022, alg. 1): each example's
      condition is replaced by the null condition with probability ``cond_drop_prob``
      (label -> ``num_classes``, context -> zeros, hint kept), so one network learns both
      the conditional and the unconditional model. Unconditional batches are unaffected.
      A batch's 'label' is part of the condition only when ``num_classes`` is given (the
      null label needs it), so an unconditional model trains on a labelled dataset as is.
    * ``loss_weighting``: "none" is the plain mean squared error on the target (w = 1);
      "min_snr" is Min-SNR-gamma (Hang et al. 2023, eq. 8): the loss in x0 units is
      weighted by min(SNR_t, gamma), i.e. w = min(SNR, gamma) / SNR for an eps target,
      min(SNR, gamma) for x0 and min(SNR, gamma) / (SNR + 1) for v, with
      SNR_t = alpha_bar_t / (1 - alpha_bar_t).

    The model output is cast to float32 before the loss, so a bf16 model still gets an
    float32 loss and gradients of float32 params.

    Metrics: ``loss`` (the weighted loss that is minimised) and ``mse_<prediction>`` (the
    unweighted squared error against the target; equal to ``loss`` for "none").
    """
    schedules.check_prediction(prediction)
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    if not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x0 = batch_image(batch)
        batch_size = x0.shape[0]
        key_t, key_noise, key_drop, key_dropout = jax.random.split(key, 4)
        t = jax.random.randint(key_t, (batch_size,), 0, schedule.num_timesteps, jnp.int32)
        noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
        x_t = schedules.q_sample(schedule, x0, t, noise)
        cond = conditioning.drop_cond(
            key_drop, model_cond(batch, num_classes=num_classes), prob=cond_drop_prob,
            num_classes=num_classes,
        )
        output = apply_fn(
            {"params": params}, x_t, t, cond, train=True, rngs={"dropout": key_dropout}
        ).astype(jnp.float32)
        target = schedules.target(schedule, x0, t, noise, prediction)
        per_example = jnp.mean(jnp.square(output - target), axis=tuple(range(1, x0.ndim)))
        weights = _loss_weights(schedule, t, prediction, loss_weighting, min_snr_gamma)
        loss = jnp.mean(weights * per_example)
        return loss, {"loss": loss, f"mse_{prediction}": jnp.mean(per_example)}

    return loss_fn


def make_corruption_loss(apply_fn: ApplyFn, *, num_classes: int | None = None) -> LossFn:
    """The corruption baseline of the Hugging Face diffusion course, unit 1 ("diffusion
    models from scratch"): no schedule, the model sees the image mixed with noise and
    predicts the clean image directly.

    amount ~ U[0, 1] per example, noise ~ U[-1, 1] elementwise, and
    x_noisy = x (1 - amount) + noise amount; loss = mean ||model(x_noisy) - x||^2.

    The course draws the noise from U[0, 1] because its images are in [0, 1]; ours are in
    [-1, 1] (the data contract), so the noise covers that range instead and a fully
    corrupted input looks like an image drawn uniformly from the data range.

    The model is called with t = round(amount * 999) (int32, the amount on the usual
    1000-step scale) rather than zeros, so a time-conditioned model gets the noise level;
    BasicUNet, the course's model, ignores t. The condition from the batch is passed through
    unchanged (no dropout), its 'label' only when ``num_classes`` is given as in
    ``make_denoising_loss``; it is None for the course's unconditional setting.
    """

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x = batch_image(batch)
        key_amount, key_noise, key_dropout = jax.random.split(key, 3)
        amount = jax.random.uniform(key_amount, (x.shape[0],), jnp.float32)
        noise = jax.random.uniform(key_noise, x.shape, jnp.float32, minval=-1.0, maxval=1.0)
        a = schedules.per_example(amount, like=x)
        x_noisy = x * (1.0 - a) + noise * a
        t = jnp.round(amount * (CORRUPTION_TIMESTEPS - 1)).astype(jnp.int32)
        output = apply_fn(
            {"params": params}, x_noisy, t, model_cond(batch, num_classes=num_classes),
            train=True, rngs={"dropout": key_dropout},
        ).astype(jnp.float32)
        loss = jnp.mean(jnp.square(output - x))
        return loss, {"loss": loss}

    return loss_fn


def make_noisy_classifier_loss(apply_fn: ApplyFn, schedule: schedules.Schedule) -> LossFn:
    """Cross-entropy of a noise-conditioned classifier p_phi(y | x_t, t) on noisy images
    (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4: "we train a classifier
    p_phi(y | x_t, t) on noisy images x_t").

    t ~ U{0, ..., T-1} and x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4,
    ``schedules.q_sample``) under the *diffusion run's* schedule, so the classifier sees
    exactly the x_t a sampler of that run visits; loss = mean_i -log softmax(logits_i)[y_i].
    ``apply_fn(variables, x_t, t, train=True)`` returns logits (B, K), e.g.
    ``models.classifier.Classifier(num_timesteps=T).apply``; the batch needs 'image' and
    'label' (B,) int.

    Metrics: ``loss`` and ``accuracy`` (of the argmax on this batch's noisy images, all t).
    """

    def loss_fn(params: Any, batch: Batch, key: jax.Array) -> tuple[jax.Array, Metrics]:
        x0 = batch_image(batch)
        if "label" not in batch:
            raise ValueError(
                "the noisy-classifier loss needs labelled data: a batch with a 'label' entry "
                f"(B,) int; got keys {sorted(batch)}"
            )
        labels = jnp.asarray(batch["label"], jnp.int32)
        key_t, key_noise = jax.random.split(key)
        t = jax.random.randint(key_t, (x0.shape[0],), 0, schedule.num_timesteps, jnp.int32)
        noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
        x_t = schedules.q_sample(schedule, x0, t, noise)
        logits = apply_fn({"params": params}, x_t, t, train=True).astype(jnp.float32)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        return loss, {"loss": loss, "accuracy": accuracy}

    return loss_fn


def _loss_weights(
    schedule: schedules.Schedule,
    t: jax.Array,
    prediction: str,
    loss_weighting: str,
    min_snr_gamma: float,
) -> jax.Array:
    """Per-example weights (B,) for ``make_denoising_loss``."""
    if loss_weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    alpha_bar = schedule.alpha_bars[t]
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = jnp.minimum(snr, min_snr_gamma)
    # ||d eps||^2 = SNR ||d x0||^2 and ||d v||^2 = (SNR + 1) ||d x0||^2 (Salimans & Ho,
    # appendix D), so these put min(SNR, gamma) on the x0-space error for every target.
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1.0)
