"""A ControlNet over an MNIST base (configs/mnist.py, or its offline IDX run).

    python -m experiments.train --config configs/mnist_controlnet.py \\
        --workdir runs/mnist_canny --config.controlnet.base_workdir=runs/mnist_idx \\
        --config.data.source=idx --config.data.path=../shared/data/mnist --config.data.split=test

The data overrides must be the base run's; the held-out 500 are the split's last records.
"""

from configs import mnist
from configs.digits_controlnet import controlnet_section


def get_config():
    config = mnist.get_config()
    config.controlnet = controlnet_section(heldout=500)
    config.train.update(
        steps=3000, learning_rate=2e-4, warmup_steps=100, ema_start_step=200,
        sample_every=1000, checkpoint_every=500,
    )
    return config
