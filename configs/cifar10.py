"""CIFAR-10 from TFDS: DDPM's 32x32 UNet layout, class-conditional with CFG (GPU/TPU).

Channels (128, 256, 256, 256) with attention at 16x16, dropout 0.1 (Ho et al. 2020,
appendix B); cosine schedule (Improved DDPM) and v-prediction.
"""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(source="tfds", name="cifar10", image_size=32, channels=3)
    config.model.update(
        name="unet",
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        attention_levels=(1,),
        norm_num_groups=32,
        dropout=0.1,
        num_classes=10,
    )
    config.diffusion.update(schedule="cosine", num_timesteps=1000, prediction="v")
    config.train.update(
        steps=400_000,
        learning_rate=2e-4,
        warmup_steps=5000,
        ema_decay=0.9999,
        ema_start_step=0,
        sample_every=10_000,
        checkpoint_every=5000,
    )
    config.sample.update(sampler="ddim", steps=100, guidance_scale=1.0, num=8)
    return config
