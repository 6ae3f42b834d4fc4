"""The autoencoder of MNIST latent diffusion: a small KL autoencoder (SD's VAE layout, no
discriminator) from 32x32 digits (MNIST's test split from IDX files, padded 28 -> 32) to
8x8x4 latents, f = 4. The first half of the latent pipeline; configs/mnist_latent_dit.py
trains a DiT on its latents.

    python -m experiments.train --config configs/mnist_vae.py --workdir runs/mnist_vae
"""

from configs import mnist_idx


def get_config():
    config = mnist_idx.get_config()
    config.data.update(resize_to=28, image_size=32, batch_size=32)
    # Replace (not update) the model section: the UNet's fields are no autoencoder fields.
    config.model = dict(
        name="autoencoder", block_out_channels=(16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, mid_block_add_attention=True,
    )
    # L1 reconstruction + a small KL (per pixel) that keeps the latents near N(0, I) in scale.
    config.autoencoder = dict(reconstruction="l1", kl_weight=1e-3)
    config.train.update(steps=500, learning_rate=2e-3, warmup_steps=50, ema_decay=0.99,
                        ema_start_step=100, log_every=50, sample_every=250,
                        checkpoint_every=250, cond_drop_prob=0.0)
    config.sample.update(guidance_scale=0.0)
    return config
