"""A depth ControlNet over the scenes base (configs/scenes.py): the exact depth maps of the
synthetic scenes (bright = near) steer the frozen unconditional UNet.

    python -m experiments.train --config configs/scenes.py --workdir runs/scenes
    python -m experiments.train --config configs/scenes_depth_controlnet.py \\
        --workdir runs/scenes_depth --config.controlnet.base_workdir=runs/scenes
    python -m experiments.sample --workdir runs/scenes_depth --hint_image depth.png
"""

from configs import scenes
from configs.digits_controlnet import controlnet_section


def get_config():
    config = scenes.get_config()
    config.controlnet = controlnet_section(hint="depth", heldout=200)
    config.train.update(
        steps=1500, learning_rate=5e-4, warmup_steps=50, ema_decay=0.99, ema_start_step=100,
        sample_every=500, checkpoint_every=250,
    )
    return config
