"""MNIST offline: the 10k-image test split from IDX files, a UNet small enough for 2 CPU cores.

The base model of the MNIST ControlNet measurement (configs/mnist_controlnet.py) and the
MNIST run that needs no TFDS download: configs/digits.py's model, schedule and optimizer
(16, 32, 32 channels, attention only at the lowest resolution, here 7x7; cosine T=200) on
28x28 MNIST digits; about 20 minutes for 3000 steps on 2 cores. For the seed's larger
UNet2DModel(32, 64, 64) on the 60k train split use configs/mnist.py.

    python -m experiments.train --config configs/mnist_idx.py --workdir runs/mnist_idx
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.data.update(
        source="idx", name="mnist", path="../shared/data/mnist", split="test",
        resize_to=None, image_size=28, channels=1, batch_size=64,
    )
    return config
