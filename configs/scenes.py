"""An unconditional UNet on synthetic shaded spheres and boxes (jaxdiff.scenes), 32x32 grey:
the base of the depth ControlNet (configs/scenes_depth_controlnet.py). No download.

    python -m experiments.train --config configs/scenes.py --workdir runs/scenes
"""

from configs import common


def get_config():
    config = common.base_config()
    config.data.update(source="scenes", name="scenes", image_size=32, channels=1, batch_size=64)
    config.data.num_scenes = 4000
    config.model.update(
        name="unet", block_out_channels=(16, 32, 32), layers_per_block=1, attention_levels=(2,),
        mid_attention=True, norm_num_groups=8,
    )
    config.diffusion.update(schedule="cosine", num_timesteps=200)
    config.train.update(
        steps=3000, learning_rate=1e-3, warmup_steps=100, ema_decay=0.995, ema_start_step=300,
        cond_drop_prob=0.0, log_every=50, sample_every=1000, checkpoint_every=500,
    )
    config.sample.update(sampler="ddim", steps=50, guidance_scale=0.0, num=16)
    return config
