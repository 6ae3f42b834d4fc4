"""scikit-learn's bundled digits (16x16) with a tiny Diffusion Transformer: no download, CPU.

Everything but the model and learning rate comes from configs/digits.py. 16x16 images in
2x2 patches give 64 tokens; 4 blocks of width 128 (~1M parameters) instead of a paper
preset, so the run stays CPU-sized.

    python -m experiments.train --config configs/digits_dit.py --workdir runs/digits_dit
"""

from configs import digits


def get_config():
    config = digits.get_config()
    # Replace (not update) the model section: the UNet's fields are no DiT attributes.
    config.model = dict(
        name="dit",
        dtype="float32",
        num_classes=10,
        patch_size=2,
        hidden_size=128,
        depth=4,
        num_heads=4,
    )
    # A lower peak lr and a longer warmup than the UNet's, as usual for transformers (the
    # paper trains with a constant 1e-4).
    config.train.update(learning_rate=5e-4, warmup_steps=200)
    return config
