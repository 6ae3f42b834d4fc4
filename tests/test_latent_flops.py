"""Tests for experiments/bench/latent_flops.py: the DiT-XL/2 count is the paper's, and the
autoencoder's jaxpr count equals a hand count of its convolutions."""

import pytest

from experiments.bench import latent_flops
from jaxdiff.models.autoencoder import AutoencoderKL


@pytest.mark.slow  # traces SD's full-size autoencoder
def test_dit_xl2_latent_step_is_the_papers_forward_times_three():
    table = dict(latent_flops.rows())
    # Peebles & Xie 2023, table 4: DiT-XL/2 at 256 (32x32x4 latents) is 118.6 G multiply-adds.
    forward = table["DiT-XL/2 train step per image, 32x32x4 latents"] / 3
    assert abs(forward / 2 - 118.6) < 0.1
    ratio = table["pixel / latent train step"]
    assert 200 < ratio < 210  # 64x the tokens, and attention is quadratic in them


def test_autoencoder_count_equals_a_hand_count():
    """One level of 4 channels on 8x8 (64 pixels), no mid attention: every conv is
    2 * 64 * k^2 * C_in * C_out FLOPs."""
    model = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(4,),
                          latent_channels=2, norm_num_groups=2, mid_block_add_attention=False)
    conv = lambda k, i, o: 2 * 64 * k * k * i * o  # noqa: E731
    resnet = 2 * conv(3, 4, 4)
    encode = conv(3, 1, 4) + resnet + 2 * resnet + conv(3, 4, 4) + conv(1, 4, 4)
    decode = conv(1, 2, 2) + conv(3, 2, 4) + 2 * resnet + 2 * resnet + conv(3, 4, 1)
    assert latent_flops.autoencoder_flops(model, 8) == (encode, decode)
