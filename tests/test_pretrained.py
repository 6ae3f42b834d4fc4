"""Tests for jaxdiff.pretrained: diffusers UNet2DModel / pipeline folders in and out.

The first tests need no torch: the test writes a safetensors file itself and checks where
the numbers land. The parity tests (skipped without torch + diffusers) compare outputs with
diffusers' UNet2DModel both ways: a diffusers folder imported, and a jaxdiff UNet exported
and loaded with ``UNet2DModel.from_pretrained``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from test_unet import random_params

from jaxdiff import pretrained, samplers, schedules
from jaxdiff.models.unet import UNet

# Two levels (8x8, 4x4) with attention at 4x4, the diffusers spelling.
SMALL = dict(
    _class_name="UNet2DModel", in_channels=2, out_channels=2, block_out_channels=[4, 8],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1, norm_num_groups=2,
    attention_head_dim=4, num_class_embeds=3,
)


def _expected(model, channels, size=8):
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]


def _silu(x):
    return x / (1 + np.exp(-x))


def test_handwritten_safetensors_land_in_the_right_slots(tmp_path):
    """All weights zero except the output head and some marked entries, so the output has a
    closed form: every block is the identity or zero, conv_norm_out of zeros is its bias
    beta, and the output is conv_out(silu(beta)), whose border pixels show which kernel taps
    land where. Old attention names (query/key/value/proj_attn) are read too."""
    unet = UNet(**pretrained.unet_kwargs(SMALL)[0])
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), _expected(unet, 2))
    state = pretrained.state_dict_from_params(zeros)
    state["class_embedding.weight"] = state["class_embedding.weight"][:3]  # no null row
    for old, new in pretrained.OLD_ATTENTION_NAMES.items():
        for leaf in ("weight", "bias"):
            state[f"mid_block.attentions.0.{old}.{leaf}"] = state.pop(
                f"mid_block.attentions.0.{new}.{leaf}"
            )
    rng = np.random.default_rng(0)
    beta = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    w_out = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)  # torch (O, I, kh, kw)
    b_out = np.array([0.1, -0.3], np.float32)
    marked = rng.normal(size=(8, 8)).astype(np.float32)  # torch Linear (out, in)
    table = rng.normal(size=(3, 16)).astype(np.float32)
    state.update({
        "conv_norm_out.bias": beta, "conv_out.weight": w_out, "conv_out.bias": b_out,
        "mid_block.attentions.0.proj_attn.weight": marked, "class_embedding.weight": table,
    })
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL))
    save_file(state, str(folder / pretrained.WEIGHTS_NAME))

    got_model, params = pretrained.load_diffusers_unet(folder)
    assert got_model.num_classes == 3  # K rows -> K classes, plus a zero null row
    np.testing.assert_array_equal(params["class_embedding"]["embedding"][:3], table)
    np.testing.assert_array_equal(params["class_embedding"]["embedding"][3], 0)
    np.testing.assert_array_equal(params["mid_block"]["attentions_0"]["to_out_0"]["kernel"],
                                  marked.T)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 2)), jnp.float32)
    out = np.asarray(got_model.apply({"params": params}, x, jnp.array([5]), jnp.array([2])))
    s = _silu(beta)
    full = b_out + np.einsum("oiyx,i->o", w_out, s)
    top_left = b_out + np.einsum("oiyx,i->o", w_out[:, :, 1:, 1:], s)  # taps y, x >= 1
    bottom_right = b_out + np.einsum("oiyx,i->o", w_out[:, :, :2, :2], s)
    top_right = b_out + np.einsum("oiyx,i->o", w_out[:, :, 1:, :2], s)
    np.testing.assert_allclose(out[0, 3, 4], full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 0], top_left, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, 7, 7], bottom_right, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 7], top_right, rtol=1e-5, atol=1e-6)


def test_round_trip_keeps_null_label_and_every_number(tmp_path):
    unet = UNet(**pretrained.unet_kwargs(SMALL)[0])
    params = random_params(_expected(unet, 2))
    pretrained.save_diffusers_unet(unet, params, tmp_path / "u")
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    assert config["num_class_embeds"] == 4 and config[pretrained.NULL_LABEL_KEY] is True
    again, loaded = pretrained.load_diffusers_unet(tmp_path / "u")
    assert again == unet
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "field, value",
    [("time_embedding_type", "fourier"), ("class_embed_type", "timestep"),
     ("mid_block_type", None), ("downsample_type", "resnet"), ("act_fn", "tanh"),
     ("resnet_time_scale_shift", "spatial"), ("down_block_types", ["SkipDownBlock2D"] * 2),
     ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"])],
)
def test_unsupported_fields_are_refused_by_name(field, value):
    with pytest.raises(pretrained.UnsupportedConfigError, match=field.split("_type")[0]):
        pretrained.unet_kwargs({**SMALL, field: value})


def test_missing_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="from_pretrained.*google/ddpm-celebahq-256"):
        pretrained.load_diffusers_pipeline(tmp_path / "nothing")


def test_scaled_linear_closed_form():
    s = schedules.scaled_linear(10, beta_start=1e-4, beta_end=0.02)
    want = np.linspace(1e-2, 0.02**0.5, 10) ** 2
    np.testing.assert_allclose(s.betas, want, rtol=1e-5)


# --------------------------------------------------------------------------- with diffusers

CELEBAHQ_SMALL = dict(  # google/ddpm-celebahq-256's layout at 1/16 width, 32x32 images
    block_out_channels=[8, 8, 16, 16, 32, 32], layers_per_block=2,
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
    attention_head_dim=None, norm_num_groups=4, norm_eps=1e-6, freq_shift=1,
    flip_sin_to_cos=False, downsample_padding=0, in_channels=3, out_channels=3,
)
CONFIGS = {
    "celebahq_layout": (CELEBAHQ_SMALL, 32),
    "classes_default": ({**SMALL, "in_channels": 3, "out_channels": 3}, 8),
    "scale_shift_gelu": (dict(
        block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
        down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", act_fn="gelu", mid_block_scale_factor=1.414,
        center_input_sample=True, time_embedding_dim=24, in_channels=1, out_channels=2,
        dropout=0.1), 8),
    "mish_no_mid_attention": (dict(
        block_out_channels=[8, 8], layers_per_block=1, norm_num_groups=2, act_fn="mish",
        down_block_types=["DownBlock2D", "DownBlock2D"], add_attention=False,
        up_block_types=["UpBlock2D", "UpBlock2D"], in_channels=1, out_channels=1), 8),
}


def _torch_out(torch, twin, x, t, labels):
    with torch.no_grad():
        return twin(
            torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2),
            torch.from_numpy(np.asarray(t)).long(),
            None if labels is None else torch.from_numpy(np.asarray(labels)).long(),
        ).sample.permute(0, 2, 3, 1).numpy()


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers_both_ways(name, tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    config, size = CONFIGS[name]
    torch.manual_seed(0)
    twin = diffusers.UNet2DModel(**{k: v for k, v in config.items() if k != "_class_name"})
    with torch.no_grad():  # move norms and biases off their 1/0 initialisation
        for p in twin.parameters():
            p.add_(0.1 * torch.randn_like(p))
    twin.eval().save_pretrained(tmp_path / "theirs")
    model, params = pretrained.load_diffusers_unet(tmp_path / "theirs")
    channels = config["in_channels"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, channels)).astype(np.float32)
    t = np.array([3, 901], np.int32)
    labels = np.array([0, 2]) if model.num_classes else None
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, t, labels))
    assert _rel(forward(params, x), _torch_out(torch, twin, x, t, labels)) < 1e-4  # import

    ours = random_params(_expected(model, channels, size), seed=2)
    pretrained.save_diffusers_unet(model, ours, tmp_path / "ours", sample_size=size)
    back = diffusers.UNet2DModel.from_pretrained(tmp_path / "ours").eval()
    assert _rel(forward(ours, x), _torch_out(torch, back, x, t, labels)) < 1e-4  # export


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedules_match_diffusers(kind):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(num_train_timesteps=300, beta_schedule=kind, beta_start=1e-4, beta_end=0.02)
    ref = diffusers.DDPMScheduler(**cfg).alphas_cumprod.numpy()
    got = pretrained.schedule_from_scheduler_config(cfg).alpha_bars
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-7)


def test_pipeline_folder_round_trip(tmp_path):
    """save_diffusers_pipeline -> DDPMPipeline.from_pretrained loads it; our loader gives
    back the schedule, prediction and sampling options."""
    unet = UNet(**pretrained.unet_kwargs({**SMALL, "num_class_embeds": None})[0])
    params = random_params(_expected(unet, 2))
    sched = pretrained.scheduler_config(schedule="cosine", num_timesteps=50, prediction="v")
    pretrained.save_diffusers_pipeline(unet, params, tmp_path / "p", scheduler_config=sched,
                                       sample_size=8)
    loaded = pretrained.load_diffusers_pipeline(tmp_path / "p")
    assert loaded.model == unet and loaded.prediction == "v" and loaded.image_size == 8
    assert loaded.variance == "posterior" and loaded.clip_sample and loaded.channels == 2
    np.testing.assert_allclose(loaded.schedule.alpha_bars, schedules.cosine(50).alpha_bars)
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "p")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod.numpy(), loaded.schedule.alpha_bars,
                               rtol=2e-5)


@pytest.mark.parametrize(
    "field, value",
    [("rescale_betas_zero_snr", True), ("clip_sample_range", 2.0), ("thresholding", True),
     ("steps_offset", 1), ("timestep_spacing", "karras"), ("prediction_type", "flow"),
     ("variance_type", "learned")],
)
def test_scheduler_settings_jaxdiff_does_not_compute_are_refused_by_name(field, value):
    base = pretrained.scheduler_config(schedule="linear", num_timesteps=50, prediction="eps")
    with pytest.raises(pretrained.UnsupportedConfigError, match=field):
        pretrained.sampling_settings({**base, field: value})
    # Values that change nothing are accepted: the default range, an unclipped range.
    assert pretrained.sampling_settings({**base, "clip_sample_range": 1.0})["clip_x0"]
    assert not pretrained.sampling_settings(
        {**base, "clip_sample": False, "clip_sample_range": 5.0})["clip_x0"]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", None])
def test_timestep_spacing_is_honoured_as_diffusers_ddim_walks_it(spacing, tmp_path):
    """A pipeline folder's ``timestep_spacing`` (diffusers' default "leading" when absent)
    becomes the strided samplers' grid, visiting the timesteps DDIMScheduler visits."""
    unet = UNet(**pretrained.unet_kwargs({**SMALL, "num_class_embeds": None})[0])
    sched = pretrained.scheduler_config(schedule="linear", num_timesteps=1000, prediction="eps")
    if spacing is not None:
        sched["timestep_spacing"] = spacing
    pretrained.save_diffusers_pipeline(unet, random_params(_expected(unet, 2)), tmp_path / "p",
                                       scheduler_config=sched, sample_size=8)
    loaded = pretrained.load_diffusers_pipeline(tmp_path / "p")
    assert loaded.spacing == (spacing or "leading")
    ts, _ = samplers.timestep_grid(1000, 30, loaded.spacing)
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ddim = diffusers.DDIMScheduler(**{k: v for k, v in sched.items() if k != "variance_type"})
    ddim.set_timesteps(30)
    np.testing.assert_array_equal(ts, ddim.timesteps.numpy())
