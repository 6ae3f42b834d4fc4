"""MNIST offline (the 10k test split from IDX files) with flow matching: configs/mnist_idx.py's
data and configs/digits_flow.py's formulation, model and training.

    python -m experiments.train --config configs/mnist_flow.py --workdir runs/mnist_flow
"""

from configs import digits_flow, mnist_idx


def get_config():
    config = digits_flow.get_config()
    config.data = mnist_idx.get_config().data
    return config
