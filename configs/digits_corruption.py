"""The "diffusion from scratch" corruption baseline on scikit-learn's digits (16x16).

The basic UNet predicts the clean image from a mix x (1 - amount) + noise amount, and
samples by the seed's naive iterative mixing (jaxdiff.losses.make_corruption_loss,
jaxdiff.samplers.corruption): the baseline that shows what DDPM's step-by-step noise buys.

    python -m experiments.train --config configs/digits_corruption.py --workdir runs/corrupt
"""

from configs import digits


def get_config():
    config = digits.get_config()
    # Replace (not update) the model section: the UNet's fields are no BasicUNet attributes.
    config.model = dict(name="basic_unet", dtype="float32")
    config.diffusion.update(loss="corruption", prediction="x0")
    config.sample.update(sampler="corruption", steps=10, guidance_scale=0.0, num=80)
    config.train.update(steps=2000, learning_rate=1e-3)
    return config
