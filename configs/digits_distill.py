"""Progressive distillation (Salimans & Ho 2022, alg. 2) of the digits v-prediction teacher.

Rounds halve the teacher's DDIM steps: the first student learns in 8 steps what the guided
teacher (CFG w = ``distill.guidance_scale``) does in 16, the next in 4 what that student does
in 8, down to 1 step. Model, schedule and prediction come from the teacher's saved config;
this config sets the data, the optimizer and the rounds (52 minutes for the four rounds on
2 CPU cores shared with other jobs).

    python -m experiments.train --config configs/digits_v.py --workdir runs/digits_v
    python -m experiments.distill --config configs/digits_distill.py --workdir runs/digits_pd \\
        --config.distill.teacher_workdir=runs/digits_v
    python -m experiments.sample --workdir runs/digits_pd --steps 4
"""

from ml_collections import config_dict

from configs import digits_v


def get_config():
    config = digits_v.get_config()
    config.distill = dict(
        teacher_workdir=config_dict.placeholder(str),  # a run of configs/digits_v.py
        start_steps=16,  # DDIM steps of the first teacher; students take 8, 4, 2, 1
        guidance_scale=2.0,  # CFG w of the first teacher; the students sample without CFG
        teacher_ema=True,  # the first teacher's EMA params (later teachers: students' EMA)
    )
    config.data.batch_size = 32
    # Per round: a fresh Adam from the teacher's weights, EMA in the optimizer state as in
    # training. Short rounds on a small model take a higher lr than the paper's 1e-4.
    config.train.update(
        steps=200,
        learning_rate=5e-4,
        warmup_steps=0,
        ema_decay=0.99,
        ema_start_step=0,
        cond_drop_prob=0.0,  # the guided teacher's output is the target for every label
        log_every=25,
        sample_every=200,
        checkpoint_every=50,
        keep_checkpoints=2,
    )
    return config
