"""A depth estimator for the scenes of configs/scenes.py: a small UNet regressing the depth
hint (bright = near) of a rendered scene from its image (jaxdiff.depth_estimation), so that
the samples of a depth ControlNet can be scored offline. Trains on scenes of seed 1 and
reports its error on 500 held-out scenes of seed 2 (depth_eval.json in the workdir).

    python -m experiments.train --config configs/scenes_depth_estimator.py \\
        --workdir runs/scenes_depth_estimator

The image size must be the ControlNet's (``--config.data.image_size``).
"""

import ml_collections

from configs import scenes


def get_config():
    config = scenes.get_config()
    config.data.seed = 1  # other scenes than the ControlNet's (seed 0)
    config.model.update(block_out_channels=(16, 32, 32), attention_levels=(), mid_attention=False)
    config.depth_estimator = ml_collections.ConfigDict(dict(eval_seed=2, eval_num=500))
    config.train.update(
        steps=1500, learning_rate=1e-3, warmup_steps=100, ema_decay=0.99, ema_start_step=100,
        log_every=50, sample_every=500, checkpoint_every=500,
    )
    return config
