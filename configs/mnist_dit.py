"""MNIST with a Diffusion Transformer (Peebles & Xie 2023): DiT-S/2 in place of the UNet.

Everything but the model comes from configs/mnist.py (data, schedule, CFG training and
sampling). 28x28 images in 2x2 patches give 196 tokens. Meant for a GPU; add
``--config.model.dtype=bfloat16`` for bf16 compute (params stay float32).

    python -m experiments.train --config configs/mnist_dit.py --workdir runs/mnist_dit
"""

from configs import mnist
from jaxdiff.models.dit import dit_config


def get_config():
    config = mnist.get_config()
    # Replace (not update) the model section: the UNet's fields are no DiT attributes.
    config.model = dict(
        name="dit",
        dtype="float32",
        num_classes=10,
        remat=False,  # True trades ~1 extra forward pass for activation memory
        **dit_config("S", patch_size=2),
    )
    # Transformers want a longer warmup than the UNet; the paper trains at a constant 1e-4.
    config.train.update(learning_rate=1e-4, warmup_steps=1000, steps=30_000)
    return config
