"""A noise-conditioned MNIST classifier p(y | x_t, t) for classifier guidance (Dhariwal &
Nichol 2021, sec. 4), trained under the schedule of configs/mnist.py (linear, T=1000). Needs
MNIST like configs/mnist.py (TFDS, or --config.data.source=idx --config.data.path=<dir>);
accuracy by noise level is measured on the test split.

    python -m experiments.train --config configs/mnist_classifier.py --workdir runs/mnist_clf
"""

import ml_collections
from ml_collections import config_dict

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.model = ml_collections.ConfigDict(
        dict(name="classifier", num_classes=10, channels=(32, 64, 128), feature_dim=128,
             num_groups=8, dtype="float32")
    )
    config.diffusion.loss = "noisy_classifier"
    config.train.update(
        steps=5000, learning_rate=1e-3, warmup_steps=200, cond_drop_prob=0.0,
        ema_start_step=500, sample_every=1000, checkpoint_every=1000,
    )
    config.sample.guidance_scale = 0.0
    config.noise_eval = dict(split=config_dict.placeholder(str), num_images=1000, levels=10)
    config.noise_eval.split = "test"
    return config
