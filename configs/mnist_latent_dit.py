"""Latent diffusion on MNIST: configs/mnist_idx_dit.py's DiT on the 8x8x4 latents of the
autoencoder of configs/mnist_vae.py (train that first) instead of 32x32 pixels: 16 tokens
instead of 256, so a train step costs 1/20.1 of the pixel DiT's model FLOPs and the run
takes 20.1x its steps for the same compute (docs/latent_diffusion.md).

The images (MNIST's test split, padded to 32x32) are encoded once into a latent cache
(``latent.cache_dir``, by default next to the autoencoder's checkpoints); the latents are
multiplied by ``latent.scaling_factor`` ("auto": 1 / their std, LDM appendix D.1;
"autoencoder": the autoencoder's own). Samples are decoded for grids, GIFs and evaluate.

    python -m experiments.train --config configs/mnist_vae.py --workdir runs/mnist_vae
    python -m experiments.train --config configs/mnist_latent_dit.py \\
        --workdir runs/mnist_latent_dit
"""

from configs import mnist_idx_dit, mnist_vae


def get_config():
    config = mnist_idx_dit.get_config()
    config.data = mnist_vae.get_config().data  # the autoencoder's 32x32 images
    config.data.batch_size = 64  # as the pixel twin's
    config.latent = dict(autoencoder_workdir="runs/mnist_vae", cache_dir="",
                         scaling_factor="auto", shard_size=512)
    config.train.update(steps=4350, log_every=250, sample_every=4350, checkpoint_every=1000,
                        ema_start_step=300)
    return config
