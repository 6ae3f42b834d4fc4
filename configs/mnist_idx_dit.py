"""A small pixel-space DiT on MNIST's test split (IDX files, padded to 32x32 as for the
autoencoder, 2x2 patches: 256 tokens): the pixel twin of configs/mnist_latent_dit.py, with
the same transformer, data, schedule and optimizer, trained for the same model FLOPs
(216 steps here, 4350 there; docs/latent_diffusion.md).

    python -m experiments.train --config configs/mnist_idx_dit.py --workdir runs/mnist_idx_dit
"""

from configs import mnist_idx

# The transformer both MNIST DiTs share: hidden 128, 4 blocks of 4 heads, 2x2 patches.
SMALL_DIT = dict(name="dit", patch_size=2, hidden_size=128, depth=4, num_heads=4,
                 num_classes=10, dtype="float32")


def get_config():
    config = mnist_idx.get_config()
    config.data.update(resize_to=28, image_size=32)
    config.model = dict(SMALL_DIT)  # replace: the UNet's fields are no DiT attributes
    config.train.update(steps=216, learning_rate=1e-3, warmup_steps=50, ema_decay=0.99,
                        ema_start_step=50, log_every=50, sample_every=216,
                        checkpoint_every=216)
    return config
