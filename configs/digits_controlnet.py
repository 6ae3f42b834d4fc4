"""A ControlNet over the digits base (configs/digits.py): Canny (or another) hints of the
16x16 digits steer the frozen class-conditional UNet.

    python -m experiments.train --config configs/digits_controlnet.py \\
        --workdir runs/digits_canny --config.controlnet.base_workdir=runs/digits
    python -m experiments.sample --workdir runs/digits_canny --hints_from_data 40

``--config.controlnet.hint=canny|hough|scribble|segmentation``; ``hint_device='device'``
makes the Canny hints with the pure-JAX Canny inside the train step instead of OpenCV in
the data pipeline. The model section must stay the base's (it is checked).
"""

import ml_collections
from ml_collections import config_dict

from configs import digits


def controlnet_section(**overrides) -> ml_collections.ConfigDict:
    """The ``config.controlnet`` fields (experiments/runs/controlnet.py reads them)."""
    section = ml_collections.ConfigDict(
        dict(
            base_workdir=config_dict.placeholder(str),  # the trained base run (required)
            hint="canny",  # canny | hough | scribble | segmentation | depth
            hint_device="data",  # "data": OpenCV in the pipeline; "device": JAX Canny on device
            conditioning_scale=1.0,  # residual scale (diffusers' controlnet_conditioning_scale)
            hint_channels=(16, 32),  # the hint encoder's conv widths
            canny_low=100.0,  # Canny thresholds on the 0..255 Sobel magnitude (also for
            canny_high=200.0,  # the edges behind hough and scribble hints)
            heldout=100,  # the source's last N records: never trained on, sampled from
            seed=0,  # scribble jitter
            # depth hints: the depth-estimator run that scores samples (--hints_from_data)
            depth_estimator=config_dict.placeholder(str),
        )
    )
    section.update(overrides)
    return section


def get_config():
    config = digits.get_config()
    config.controlnet = controlnet_section()
    config.train.update(
        steps=1500, learning_rate=5e-4, warmup_steps=50, ema_decay=0.99, ema_start_step=100,
        log_every=50, sample_every=500, checkpoint_every=250,
    )
    return config
