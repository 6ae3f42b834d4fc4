"""scikit-learn's digits with flow matching (rectified flow): configs/digits.py's model,
steps, batch and optimizer, trained on the velocity eps - x0 of x_t = (1 - t) x0 + t eps.

The model sees 1000 t as its timestep; samples come from the flow Euler or Heun sampler
(``--sampler flow_euler|flow_heun``), with classifier-free guidance as in digits.py.

    python -m experiments.train --config configs/digits_flow.py --workdir runs/digits_flow
"""

from configs import digits


def get_config():
    config = digits.get_config()
    # time_sampling: "uniform" (Lipman et al. 2023, SiT) | "logit_normal" (SD3, sec. 3.1)
    config.diffusion.update(
        loss="flow_matching", time_sampling="uniform", logit_mean=0.0, logit_std=1.0
    )
    # shift: SD3's time shift of the sampling grid (1 = an even grid in t).
    config.sample.update(sampler="flow_euler", steps=32, shift=1.0)
    return config
