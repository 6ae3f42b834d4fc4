"""MNIST from TFDS: a class-conditional UNet with classifier-free guidance.

DDPM's T=1000 linear schedule, EMA of the params, DDIM previews with guidance. Needs the
prepared TFDS dataset (network, or --config.data.manual_dir); offline, train on the IDX
files instead (--config.data.source=idx --config.data.path=<dir>) or use configs/digits.py.

    python -m experiments.train --config configs/mnist.py --workdir runs/mnist
"""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(source="tfds", name="mnist", split="train", image_size=28, channels=1)
    config.data.batch_size = 128
    # 28 = 4 * 7: two downsamplings, the seed's UNet2DModel(32, 64, 64) layout.
    config.model.update(
        name="unet",
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_levels=(1, 2),
        norm_num_groups=8,
        dropout=0.1,
        num_classes=10,
    )
    config.train.update(steps=20_000, learning_rate=2e-4, warmup_steps=500, ema_start_step=1000)
    config.sample.update(sampler="ddim", steps=50, guidance_scale=2.0, num=8)
    return config
