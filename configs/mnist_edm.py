"""MNIST offline (the 10k test split from IDX files) with EDM: configs/mnist_idx.py's data and
configs/digits_edm.py's formulation, model and training.

    python -m experiments.train --config configs/mnist_edm.py --workdir runs/mnist_edm
"""

from configs import digits_edm, mnist_idx


def get_config():
    config = digits_edm.get_config()
    config.data = mnist_idx.get_config().data
    return config
