"""A real, if weak, end-to-end check on real data.

Train a tiny class-conditional UNet (with CFG label dropout) a few hundred steps on the MNIST
test split with the real train step, sample with guided DDIM, and check that the samples'
pixel statistics are closer to real digits than noise's are."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.models.unet import UNet

SIZE, STEPS, BATCH = 16, 300, 64


def _stats(images: np.ndarray) -> np.ndarray:
    """Per-pixel mean image, then global std and the fraction of near-black background."""
    images = np.asarray(images)[..., 0]
    return np.concatenate(
        [images.mean(0).ravel(), [images.std(), (images < -0.8).mean()]]
    )


@pytest.mark.slow
def test_tiny_unet_on_real_mnist_samples_digit_like_images(mnist_dir):
    source = jd.sources.load_idx(mnist_dir, split="test")
    pipeline = jd.data.make_pipeline(source, batch_size=BATCH, seed=0, image_size=SIZE)

    schedule = jd.schedules.linear(1000)
    model = UNet(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(),
                 mid_attention=False, norm_num_groups=8, num_classes=10)
    x = jnp.zeros((1, SIZE, SIZE, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]
    loss_fn = jd.losses.make_denoising_loss(model.apply, schedule, prediction="eps",
                                           cond_drop_prob=0.1, num_classes=10)
    optimizer = jd.optim.make_optimizer(learning_rate=2e-3, warmup_steps=20,
                                        ema_decay=0.99, ema_start_step=100)
    mesh = jd.train.make_mesh()
    state = jd.train.create_train_state(params, optimizer, jax.random.key(1))
    train_step = jd.train.make_train_step(loss_fn, optimizer, mesh)

    losses, real = [], []
    for _ in range(STEPS):
        batch = next(pipeline)
        real.append(batch["image"])
        state, metrics = train_step(state, jd.train.shard_batch(batch, mesh))
        losses.append(metrics["loss"])
    losses = np.asarray(jax.device_get(losses))
    assert losses[-50:].mean() < 0.6 * losses[:10].mean(), losses

    ema = jd.optim.ema_params(state.opt_state)
    labels = jnp.arange(256) % 10
    sample = jax.jit(
        lambda p, key: jd.samplers.ddim(
            jd.guidance.cfg(lambda x_t, t, c: model.apply({"params": p}, x_t, t, c),
                            guidance_scale=1.0, num_classes=10),
            schedule, key, (256, SIZE, SIZE, 1), cond=labels, num_steps=25,
        )[0]
    )
    samples = np.asarray(sample(ema, jax.random.key(2)))
    noise = np.clip(np.asarray(jax.random.normal(jax.random.key(3), samples.shape)), -1, 1)
    real_stats = _stats(np.concatenate(real[:20]))
    d_samples = np.linalg.norm(_stats(samples) - real_stats)
    d_noise = np.linalg.norm(_stats(noise) - real_stats)
    assert np.isfinite(samples).all()
    # Real and weak: the samples' statistics are at least twice as close as noise's.
    assert d_samples < 0.5 * d_noise, (d_samples, d_noise)
