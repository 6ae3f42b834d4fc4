"""Tests for the published DiT in jaxdiff: diffusers ``DiTTransformer2DModel`` folders in and
out (jaxdiff.pretrained.dit), Improved DDPM's learned-range variance
(jaxdiff.samplers.learned_variance) and whole ``DiTPipeline`` folders sampled in JAX
(jaxdiff.pretrained.dit_pipeline, jaxdiff.latent). The twins skip without torch + diffusers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_unet import random_params

from jaxdiff import latent, pretrained, samplers, schedules
from jaxdiff.pretrained import dit as dit_io
from jaxdiff.pretrained import dit_pipeline

# DiT-XL/2's layout (learned sigma, 4 latent channels, patch 2) at reduced width and depth.
DIT_SMALL = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                 num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
VAE_SMALL = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8],
                 layers_per_block=1, norm_num_groups=4,
                 down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _random_twin(torch, diffusers, tie=True):
    """A DiTTransformer2DModel with every weight moved off its initialisation and, as in the
    published checkpoints, block 0's timestep/class embedders in every block."""
    torch.manual_seed(0)
    twin = diffusers.DiTTransformer2DModel(**DIT_SMALL)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if tie:
            for block in twin.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(twin.transformer_blocks[0].norm1.emb.state_dict())
    return twin.eval()


def _torch_dit(torch, twin, x, t, labels):
    with torch.no_grad():
        out = twin(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2),
                   timestep=torch.from_numpy(np.asarray(t)).long(),
                   class_labels=torch.from_numpy(np.asarray(labels)).long()).sample
    return out.permute(0, 2, 3, 1).numpy()


def test_dit_matches_diffusers_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    twin = _random_twin(torch, diffusers)
    twin.save_pretrained(tmp_path / "theirs")
    model, params = pretrained.load_diffusers_dit(tmp_path / "theirs")
    assert model.learn_sigma and model.num_classes == 1000 and model.hidden_size == 16
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 8, 4)).astype(np.float32)
    t, labels = np.array([0, 321, 999]), np.array([207, 1000, 5])  # 1000: the null class
    forward = jax.jit(lambda p: model.apply({"params": p}, x, t, labels))
    got = forward(params)
    assert got.shape == (3, 8, 8, 8)  # eps then the variance half, NHWC
    assert _rel(got, _torch_dit(torch, twin, x, t, labels)) < 1e-4  # import

    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, labels)["params"]
    ours = random_params(shapes, seed=2)
    pretrained.save_diffusers_dit(model, ours, tmp_path / "ours", in_channels=4, sample_size=8)
    back = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "ours").eval()
    assert _rel(forward(ours), _torch_dit(torch, back, x, t, labels)) < 1e-4  # export


def test_untied_embedders_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    _random_twin(torch, diffusers, tie=False).save_pretrained(tmp_path)
    with pytest.raises(pretrained.UnsupportedConfigError, match="transformer_blocks.1.norm1.emb"):
        pretrained.load_diffusers_dit(tmp_path)


@pytest.mark.parametrize("field,value", [("norm_type", "ada_norm_single"),
                                         ("activation_fn", "geglu"), ("out_channels", 6)])
def test_unsupported_dit_fields_are_refused_by_name(field, value):
    with pytest.raises(pretrained.UnsupportedConfigError, match=field):
        dit_io.dit_kwargs({**DIT_SMALL, field: value})


def test_learned_range_endpoints_are_the_fixed_variances():
    """v = 1 gives log beta_t, v = -1 log beta_tilde_t (Improved DDPM eq. 15)."""
    s = schedules.linear(100)
    for t in (1, 50, 99):
        ends = samplers.learned_range_log_variance(s, t, jnp.array([1.0, -1.0]))
        np.testing.assert_allclose(np.exp(ends), [s.betas[t], samplers.posterior_variance(s, t)],
                                   rtol=1e-4)


@pytest.mark.parametrize("clip", [False, True])
def test_learned_range_step_equals_diffusers(clip):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range",
                                  clip_sample=clip)
    ref.set_timesteps(1000)
    schedule = pretrained.schedule_from_scheduler_config(ref.config)
    rng = np.random.default_rng(0)
    for t in (999, 640, 20, 1, 0):
        x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
        out = np.concatenate([rng.normal(size=(2, 4, 4, 3)),
                              rng.uniform(-1, 1, size=(2, 4, 4, 3))], -1).astype(np.float32)
        noise = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(t))
        want = ref.step(torch.from_numpy(out).permute(0, 3, 1, 2), t,
                        torch.from_numpy(x).permute(0, 3, 1, 2),
                        generator=torch.Generator().manual_seed(t)).prev_sample
        got = samplers.ddpm_step(schedule, x, t, out, noise.permute(0, 2, 3, 1).numpy(),
                                 clip_x0=clip, variance="learned_range")
        np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)


def _pipeline_folder(torch, diffusers, path, scheduler):
    torch.manual_seed(3)
    vae = diffusers.AutoencoderKL(**VAE_SMALL)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pipe = diffusers.DiTPipeline(transformer=_random_twin(torch, diffusers), vae=vae.eval(),
                                 scheduler=scheduler)
    pipe.save_pretrained(path)
    return pipe


def test_dit_pipeline_samples_like_diffusers(tmp_path):
    """A whole random DiTPipeline folder: jaxdiff's DDIM + CFG + decode from the same
    initial latents gives diffusers' DiTPipeline images (guidance s = 1 + w)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
    pipe = _pipeline_folder(torch, diffusers, tmp_path, scheduler)
    labels = [207, 360]
    want = pipe(class_labels=labels, guidance_scale=4.0, num_inference_steps=5,
                generator=torch.Generator().manual_seed(0), output_type="np").images
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))

    loaded = dit_pipeline.load_dit_pipeline(tmp_path)
    assert loaded.variance == "learned_range" and not loaded.clip_sample
    z, _ = latent.sample_latents(
        loaded.model, loaded.params, loaded.schedule, jax.random.key(0), shape=(2, 8, 8, 4),
        cond=jnp.array(labels), sampler="ddim", steps=5, guidance_scale=3.0,
        initial_noise=noise.permute(0, 2, 3, 1).numpy(),
    )
    images = latent.decode(loaded.vae, loaded.vae_params, z)
    assert images.shape == (2, 16, 16, 3)
    assert _rel((np.asarray(images) + 1) / 2, want) < 1e-4


@pytest.mark.slow
def test_sample_cli_draws_from_a_dit_pipeline_folder(tmp_path):
    """experiments.sample --pretrained <DiTPipeline folder> --labels ... --guidance_scale w:
    DDPM with the learned variance over all T steps, decoded; the grid, GIF and npz hold
    the decoded images; ddim from the same folder gives other images of the same labels."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from experiments.runs import sampling

    _pipeline_folder(torch, diffusers, tmp_path / "pipe", diffusers.DDPMScheduler(
        variance_type="learned_range", num_train_timesteps=100))
    outs = {
        name: sampling.sample(None, pretrained=str(tmp_path / "pipe"), sampler=name, steps=4,
                              labels="207,360,387", guidance_scale=4, num=1,
                              out=str(tmp_path / name))
        for name in ("ddpm", "ddim")
    }
    for out in outs.values():
        assert out["images"].shape == (3, 16, 16, 3)
        assert out["grid"].exists() and out["gif"].exists()
        saved = np.load(out["npz"])
        np.testing.assert_array_equal(saved["labels"], [207, 360, 387])
        np.testing.assert_array_equal(saved["images"], out["images"])
    assert np.abs(outs["ddpm"]["images"].astype(int) - outs["ddim"]["images"]).max() > 0
