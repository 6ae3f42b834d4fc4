"""A ControlNet over the offline MNIST base (configs/mnist_idx.py: the 10k test split from
IDX files): Canny (or another) hints of 28x28 digits steer the frozen class-conditional UNet.

    python -m experiments.train --config configs/mnist_idx.py --workdir runs/mnist_idx
    python -m experiments.train --config configs/mnist_controlnet.py \\
        --workdir runs/mnist_canny --config.controlnet.base_workdir=runs/mnist_idx
    python -m experiments.sample --workdir runs/mnist_canny --hints_from_data 100

The held-out 500 hints are the split's last records (never trained on by the ControlNet).
Over a configs/mnist.py base, take that file's data and model sections instead (the model
section must be the base's; it is checked).
"""

from configs import mnist_idx
from configs.digits_controlnet import controlnet_section


def get_config():
    config = mnist_idx.get_config()
    config.controlnet = controlnet_section(heldout=500)
    config.train.update(
        steps=1500, learning_rate=5e-4, warmup_steps=50, ema_decay=0.99, ema_start_step=100,
        log_every=50, sample_every=500, checkpoint_every=250,
    )
    return config
