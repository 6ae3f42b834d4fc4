"""Fashion-MNIST from TFDS: a class-conditional UNet with classifier-free guidance (GPU)."""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(source="tfds", name="fashion_mnist", image_size=28, channels=1)
    config.model.update(
        name="unet",
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        attention_levels=(1, 2),
        norm_num_groups=32,
        dropout=0.1,
        num_classes=10,
    )
    config.train.update(steps=50_000, learning_rate=2e-4, warmup_steps=1000)
    config.sample.update(sampler="ddim", steps=50, guidance_scale=2.0, num=8)
    return config
