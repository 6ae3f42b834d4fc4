"""The digits run without labels: an unconditional UNet, for classifier guidance
(Dhariwal & Nichol 2021, sec. 4) with configs/digits_classifier.py. No download, CPU.

    python -m experiments.train --config configs/digits_uncond.py --workdir runs/digits_uncond
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.model.num_classes = None
    config.train.cond_drop_prob = 0.0
    config.sample.guidance_scale = 0.0
    return config
