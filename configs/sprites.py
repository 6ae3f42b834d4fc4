"""16x16 RGB sprites (the DeepLearning.AI course's data) with the seed's ContextUnet.

T=500 linear 1e-4..0.02, n_feat=64, a 5-dim context (hero, non-hero, food, spell,
side-facing). The data are two .npy files; point the config at them:

    python -m experiments.train --config configs/sprites.py --workdir runs/sprites \\
        --config.data.images_path=sprites_1788_16x16.npy \\
        --config.data.labels_path=sprite_labels_nc_1788_16x16.npy
"""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(
        source="npy",
        name="sprites",
        images_path="sprites_1788_16x16.npy",
        labels_path="sprite_labels_nc_1788_16x16.npy",
        image_size=16,
        channels=3,
        batch_size=100,
    )
    config.diffusion.update(schedule="linear", num_timesteps=500, beta_start=1e-4, beta_end=0.02)
    config.model.update(
        name="context_unet",
        n_feat=64,
        n_cfeat=5,
        # References: the model's T and height follow the schedule and the data.
        num_timesteps=config.diffusion.get_ref("num_timesteps"),
        height=config.data.get_ref("image_size"),
    )
    config.train.update(steps=30_000, learning_rate=1e-3, warmup_steps=0, ema_start_step=1000)
    config.sample.update(sampler="ddpm", steps=500, guidance_scale=0.0, num=8)
    return config
