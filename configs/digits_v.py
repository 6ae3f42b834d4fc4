"""The digits run with v-prediction (Salimans & Ho 2022, sec. 4): the teacher of progressive
distillation (configs/digits_distill.py). No download, CPU.

T = 256 with the cosine schedule, so every halving of a 256-step DDIM grid nests in the
teacher's timesteps (256 -> 128 -> ... -> 1 student steps).

    python -m experiments.train --config configs/digits_v.py --workdir runs/digits_v
"""

from configs import digits


def get_config():
    config = digits.get_config()
    config.diffusion.update(prediction="v", num_timesteps=256)
    return config
