"""Latent against pixel diffusion, in model FLOPs: DiT-XL/2 on the 32x32x4 latents of SD's
autoencoder against DiT-XL/2 on 256x256x3 pixels (Peebles & Xie 2023, table 4 counts the
same forward in multiply-adds: 118.6 G for DiT-XL/2 at 256), and the autoencoder's own cost
per image (counted from its jaxpr, no run), which a latent cache pays once per data set
instead of once per step. Also the two MNIST DiTs of configs/mnist_latent_dit.py and
configs/mnist_idx_dit.py, whose step counts give them equal training FLOPs.

    python -m experiments.bench.latent_flops
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.bench.flops import dit_forward_flops, matmul_flops, train_step_flops
from jaxdiff.models.autoencoder import AutoencoderKL

XL2 = dict(depth=28, hidden_size=1152, patch_size=2)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2)  # sd-vae-ft-ema


def autoencoder_flops(model: AutoencoderKL, image_size: int) -> tuple[int, int]:
    """(encode, decode) matmul + conv FLOPs of one ``image_size`` image, from the jaxprs."""
    f = model.downsample_factor
    x = jax.ShapeDtypeStruct((1, image_size, image_size, model.in_channels), jnp.float32)
    z = jax.ShapeDtypeStruct((1, image_size // f, image_size // f, model.latent_channels),
                             jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    encode = matmul_flops(lambda p, x: model.apply(p, x, method="encode"), params, x)
    decode = matmul_flops(lambda p, z: model.apply(p, z, method="decode"), params, z)
    return encode, decode


def rows() -> list[tuple[str, float]]:
    """(what, GFLOPs) of the comparison, in the order the docs table shows them."""
    latent = dit_forward_flops(**XL2, image_size=32, in_channels=4, out_channels=8)
    pixel = dit_forward_flops(**XL2, image_size=256, in_channels=3, out_channels=6)
    encode, decode = autoencoder_flops(AutoencoderKL(**SD_VAE), 256)
    return [
        ("DiT-XL/2 train step per image, 32x32x4 latents", train_step_flops(latent) / 1e9),
        ("DiT-XL/2 train step per image, 256x256x3 pixels", train_step_flops(pixel) / 1e9),
        ("pixel / latent train step", pixel / latent),
        ("SD autoencoder encode, one 256x256 image", encode / 1e9),
        ("SD autoencoder decode, one 32x32x4 latent", decode / 1e9),
    ]


def mnist_rows() -> list[tuple[str, float]]:
    """(what, TFLOPs) of the MNIST latent/pixel comparison's training runs."""
    small = dict(depth=4, hidden_size=128, patch_size=2)
    latent = dit_forward_flops(**small, image_size=8, in_channels=4)
    pixel = dit_forward_flops(**small, image_size=32, in_channels=1)
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(16, 32, 32),
                        norm_num_groups=8)
    encode, decode = autoencoder_flops(vae, 32)
    return [
        ("latent DiT, 4350 steps x 64 latents", 4350 * 64 * train_step_flops(latent) / 1e12),
        ("pixel DiT, 216 steps x 64 images", 216 * 64 * train_step_flops(pixel) / 1e12),
        ("autoencoder, 500 steps x 32 images", 500 * 32 * train_step_flops(encode + decode)
         / 1e12),
        ("latent cache, 10000 images encoded once", 10_000 * encode / 1e12),
    ]


if __name__ == "__main__":
    for what, value in rows():
        print(f"| {what} | {value:,.1f} |")
    for what, value in mnist_rows():
        print(f"| {what} | {value:,.2f} TFLOPs |")
