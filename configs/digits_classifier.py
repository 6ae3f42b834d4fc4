"""A noise-conditioned digits classifier p(y | x_t, t) for classifier guidance (Dhariwal &
Nichol 2021, "Diffusion Models Beat GANs", sec. 4): trained on x_t ~ q(x_t | x_0) under the
schedule of configs/digits.py and configs/digits_uncond.py (cosine, T=200), which it then
guides. No download, CPU; writes accuracy_by_noise.png to the workdir.

    python -m experiments.train --config configs/digits_classifier.py --workdir runs/digits_clf
    python -m experiments.sample --workdir runs/digits_uncond \\
        --classifier_workdir runs/digits_clf --classifier_scale 3 --labels 0,1,2
"""

import ml_collections
from ml_collections import config_dict

from configs import digits


def get_config():
    config = digits.get_config()  # data and diffusion schedule of the runs it guides
    # The diffusion section stays the guided run's (its timesteps and alpha_bars); the model
    # is the classifier, conditioned on those T timesteps (model.num_timesteps is set from it).
    config.model = ml_collections.ConfigDict(
        dict(name="classifier", num_classes=10, channels=(32, 64, 64), feature_dim=128,
             num_groups=8, dtype="float32")
    )
    config.diffusion.loss = "noisy_classifier"
    config.train.update(
        steps=2000, learning_rate=1e-3, warmup_steps=100, cond_drop_prob=0.0, ema_decay=0.995,
        ema_start_step=300, log_every=50, sample_every=500, checkpoint_every=500,
    )
    config.sample.guidance_scale = 0.0
    # Accuracy by noise level on num_images images of `split` (default: data.split; the
    # digits have only "train") at `levels` timesteps evenly spaced over [0, T).
    config.noise_eval = dict(split=config_dict.placeholder(str), num_images=512, levels=10)
    return config
