"""scikit-learn's digits with EDM (Karras et al. 2022): configs/digits.py's model, steps,
batch and optimizer, wrapped in EDM's preconditioning (table 1) and trained with its
log-normal noise levels and loss weight.

Samples come from EDM's Heun sampler (alg. 1) on the rho = 7 noise levels
(``--sampler edm_heun``), with classifier-free guidance as in digits.py.

    python -m experiments.train --config configs/digits_edm.py --workdir runs/digits_edm
"""

from configs import digits


def get_config():
    config = digits.get_config()
    # EDM table 1: sigma_data for data in [-1, 1], ln sigma ~ N(p_mean, p_std^2) in
    # training, sigma_max -> sigma_min on eq. 5's rho = 7 grid when sampling.
    config.diffusion.update(
        loss="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80.0,
        rho=7.0,
    )
    # s_churn: EDM alg. 2's stochasticity (0 = the deterministic alg. 1).
    config.sample.update(sampler="edm_heun", steps=16, s_churn=0.0)
    return config
