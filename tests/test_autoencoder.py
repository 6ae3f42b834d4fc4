"""Tests for jaxdiff.models.autoencoder and jaxdiff.pretrained's AutoencoderKL folders.

Without torch: the latent scaling's closed form, the refused config fields, a handwritten
folder whose decoder output has a closed form. With torch + diffusers: random
``AutoencoderKL`` folders (sd-vae-ft-ema's layout at reduced width, and one with
``shift_factor`` and no quant convs) read into jaxdiff give diffusers' posterior mean / std
and decoded images, and jaxdiff autoencoders written out load in
``AutoencoderKL.from_pretrained`` with the same outputs.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from test_unet import random_params

from jaxdiff import pretrained
from jaxdiff.models.autoencoder import AutoencoderKL, scale_latents, unscale_latents

# stabilityai/sd-vae-ft-ema's config.json at 1/16 width (four levels, f = 8).
SD_VAE_SMALL = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4,
    block_out_channels=[8, 16, 32, 32], layers_per_block=2, norm_num_groups=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    act_fn="silu", sample_size=32, scaling_factor=0.18215,
)
SHIFTED = dict(  # an SD3/Flux-style latent space: shift_factor, no quant convs, no mid attention
    _class_name="AutoencoderKL", in_channels=1, out_channels=1, latent_channels=2,
    block_out_channels=[8, 8], layers_per_block=1, norm_num_groups=2,
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
    use_post_quant_conv=False, mid_block_add_attention=False,
)
CONFIGS = {"sd_vae_layout": (SD_VAE_SMALL, 32), "shift_factor": (SHIFTED, 8)}
SLOW = {"sd_vae_layout"}  # four levels at 32x32: ~20 s of compiling


def _shapes(model, size):
    x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def test_latent_scaling_closed_form_and_inverse():
    z = jnp.array([-1.0, 0.0, 2.0])
    got = scale_latents(z, scaling_factor=0.5, shift_factor=0.25)
    np.testing.assert_allclose(got, [-0.625, -0.125, 0.875])
    np.testing.assert_allclose(unscale_latents(got, scaling_factor=0.5, shift_factor=0.25), z)
    np.testing.assert_allclose(scale_latents(z, scaling_factor=2.0), 2.0 * z)


@pytest.mark.parametrize("field,value", [
    ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
    ("latents_mean", [0.0, 0.0]), ("norm_type", "spatial"), ("act_fn", "tanhshrink"),
    ("_class_name", "AutoencoderTiny"),
])
def test_unsupported_fields_are_refused_by_name(field, value):
    with pytest.raises(pretrained.UnsupportedConfigError, match=field.lstrip("_")):
        pretrained.autoencoder_kwargs({**SHIFTED, field: value})


def test_handwritten_decoder_closed_form(tmp_path):
    """All weights zero except conv_norm_out's bias beta and conv_out: every block is then
    the identity on zeros, the GroupNorm of zeros is beta, and the decoded image is
    conv_out(silu(beta)) + bias in the interior, whatever the latent."""
    model = AutoencoderKL(**pretrained.autoencoder_kwargs(SHIFTED))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), _shapes(model, 8))
    state = pretrained.state_dict_from_params(zeros)
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in state
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in state
    rng = np.random.default_rng(0)
    beta = rng.normal(size=8).astype(np.float32)
    w_out = rng.normal(size=(1, 8, 3, 3)).astype(np.float32)
    state.update({"decoder.conv_norm_out.bias": beta, "decoder.conv_out.weight": w_out,
                  "decoder.conv_out.bias": np.array([0.3], np.float32)})
    (tmp_path / "config.json").write_text(json.dumps(SHIFTED))
    save_file(state, str(tmp_path / pretrained.WEIGHTS_NAME))
    model, params = pretrained.load_diffusers_autoencoder(tmp_path)
    z = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
    out = np.asarray(model.apply({"params": params}, z, method="decode"))
    assert out.shape == (1, 8, 8, 1)
    want = 0.3 + np.einsum("oiyx,i->o", w_out, beta / (1 + np.exp(-beta)))
    np.testing.assert_allclose(out[0, 1:-1, 1:-1, 0], want[0], rtol=1e-5)


# --------------------------------------------------------------------------- with diffusers

def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _nchw(torch, x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def _torch_outputs(torch, twin, x, z):
    """(mean, std, decode(z)) of a diffusers AutoencoderKL, NHWC numpy."""
    with torch.no_grad():
        dist = twin.encode(_nchw(torch, x)).latent_dist
        image = twin.decode(_nchw(torch, z)).sample
    return tuple(a.permute(0, 2, 3, 1).numpy() for a in (dist.mean, dist.std, image))


def _ours(model, params, x, z):
    mean, logvar = model.apply({"params": params}, x, method="encode")
    return mean, jnp.exp(0.5 * logvar), model.apply({"params": params}, z, method="decode")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CONFIGS)])
def test_matches_diffusers_both_ways(name, tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    config, size = CONFIGS[name]
    torch.manual_seed(0)
    twin = diffusers.AutoencoderKL(**{k: v for k, v in config.items() if k != "_class_name"})
    with torch.no_grad():  # move norms and biases off their 1/0 initialisation
        for p in twin.parameters():
            p.add_(0.1 * torch.randn_like(p))
    twin.eval().save_pretrained(tmp_path / "theirs")
    model, params = pretrained.load_diffusers_autoencoder(tmp_path / "theirs")
    assert (model.scaling_factor, model.shift_factor) == (
        config["scaling_factor"], config.get("shift_factor"))
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, size, size, config["in_channels"])).astype(np.float32)
    f = model.downsample_factor
    z = rng.normal(size=(2, size // f, size // f, config["latent_channels"])).astype(np.float32)
    theirs = _torch_outputs(torch, twin, x, z)
    for got, want in zip(_ours(model, params, x, z), theirs, strict=True):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-4  # import

    ours = random_params(_shapes(model, size), seed=2)
    pretrained.save_diffusers_autoencoder(model, ours, tmp_path / "ours", sample_size=size)
    back = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours").eval()
    assert back.config.shift_factor == config.get("shift_factor")
    theirs = _torch_outputs(torch, back, x, z)
    for got, want in zip(_ours(model, ours, x, z), theirs, strict=True):
        assert _rel(got, want) < 1e-4  # export


def test_gaussian_kl_closed_form_and_loss_terms():
    """KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per element, summed; the
    loss is the per-pixel L1 of the reconstruction from the key's posterior draw plus
    kl_weight times the KL per pixel."""
    from jaxdiff.autoencoder_loss import gaussian_kl, make_autoencoder_loss

    mean = jnp.array([[[[1.0, 0.0]]], [[[0.0, -2.0]]]])
    logvar = jnp.log(jnp.array([[[[4.0, 1.0]]], [[[1.0, 0.25]]]]))
    want = 0.5 * np.array([1 + 4 - 1 - np.log(4), 4 + 0.25 - 1 - np.log(0.25)])
    np.testing.assert_allclose(gaussian_kl(mean, logvar), want, rtol=1e-6)

    model = AutoencoderKL(**pretrained.autoencoder_kwargs(SHIFTED))
    params = random_params(_shapes(model, 8), seed=3)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
    key = jax.random.key(7)
    loss, metrics = make_autoencoder_loss(model.apply, kl_weight=0.5)(params, {"image": x}, key)
    recon, m, lv = model.apply({"params": params}, x, key)
    rec = float(jnp.mean(jnp.abs(recon - x)))
    kl = float(jnp.mean(gaussian_kl(m, lv)))
    np.testing.assert_allclose([metrics["reconstruction"], metrics["kl"]], [rec, kl], rtol=1e-6)
    np.testing.assert_allclose(loss, rec + 0.5 * kl / 64, rtol=1e-6)
    z_mean_recon = model.apply({"params": params}, x)[0]  # key None: z = mean
    assert float(jnp.abs(z_mean_recon - recon).max()) > 0
