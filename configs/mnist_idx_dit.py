"""A small pixel-space DiT on MNIST's test split (IDX files, 28x28, 2x2 patches: 196
tokens): the pixel twin of configs/mnist_latent_dit.py, with the same transformer, schedule
and optimizer, trained for the same model FLOPs (docs/latent_diffusion.md).

    python -m experiments.train --config configs/mnist_idx_dit.py --workdir runs/mnist_idx_dit
"""

from configs import mnist_idx

# The transformer both MNIST DiTs share: hidden 128, 4 blocks of 4 heads, 2x2 patches.
SMALL_DIT = dict(name="dit", patch_size=2, hidden_size=128, depth=4, num_heads=4,
                 num_classes=10, dtype="float32")


def get_config():
    config = mnist_idx.get_config()
    config.model = dict(SMALL_DIT)  # replace: the UNet's fields are no DiT attributes
    config.train.update(steps=300, learning_rate=1e-3, warmup_steps=50, ema_decay=0.99,
                        ema_start_step=50, log_every=50, sample_every=300,
                        checkpoint_every=300)
    return config
