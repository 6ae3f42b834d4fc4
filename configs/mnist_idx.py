"""MNIST offline: the 10k-image test split from IDX files, a UNet small enough for 2 CPU cores.

The base model of the MNIST ControlNet measurement (configs/mnist_controlnet.py) and the
MNIST run that needs no TFDS download. Same layout as configs/digits.py (16, 32, 32 channels,
attention only at the lowest resolution, here 7x7), DDPM's cosine schedule with T=200.
For the seed's larger UNet2DModel(32, 64, 64) on the 60k train split use configs/mnist.py.

    python -m experiments.train --config configs/mnist_idx.py --workdir runs/mnist_idx
"""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(
        source="idx", name="mnist", path="../shared/data/mnist", split="test",
        image_size=28, channels=1, batch_size=64,
    )
    # 28 -> 14 -> 7; attention only at 7x7, where 49 tokens are cheap.
    config.model.update(
        name="unet",
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        attention_levels=(2,),
        mid_attention=True,
        norm_num_groups=8,
        num_classes=10,
    )
    config.diffusion.update(schedule="cosine", num_timesteps=200)
    config.train.update(
        steps=4000, learning_rate=1e-3, warmup_steps=100, ema_decay=0.995, ema_start_step=300,
        log_every=50, sample_every=1000, checkpoint_every=500,
    )
    config.sample.update(sampler="ddim", steps=50, guidance_scale=2.0, num=8)
    return config
