"""scikit-learn's digits with a SiT (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based
Generative Models with Scalable Interpolant Transformers"): configs/digits_dit.py's tiny DiT
trained with flow matching as in configs/digits_flow.py.

    python -m experiments.train --config configs/digits_dit_flow.py --workdir runs/digits_sit
"""

from configs import digits_dit, digits_flow


def get_config():
    config = digits_dit.get_config()
    flow = digits_flow.get_config()
    config.diffusion = flow.diffusion
    config.sample = flow.sample
    return config
