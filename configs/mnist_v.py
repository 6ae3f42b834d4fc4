"""MNIST with v-prediction (Salimans & Ho 2022, sec. 4): a progressive-distillation teacher.

The class-conditional UNet of configs/mnist.py with the cosine schedule at T = 256, so the
"trailing" DDIM grids of 256, 128, ..., 1 steps nest in the teacher's timesteps
(experiments/distill.py). Offline, train on the IDX files:

    python -m experiments.train --config configs/mnist_v.py --workdir runs/mnist_v \\
        --config.data.source=idx --config.data.path=../shared/data/mnist --config.data.split=test
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.diffusion.update(schedule="cosine", prediction="v", num_timesteps=256)
    return config
