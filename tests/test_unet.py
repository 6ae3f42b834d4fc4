"""Tests for jaxdiff.models.unet and jaxdiff.models.layers (tiny configs, 8x8 images)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxdiff import pretrained
from jaxdiff.models.layers import split_cond, timestep_embedding
from jaxdiff.models.unet import UNet, diffusers_kwargs

# Two levels (8x8 and 4x4), attention at the 4x4 level and in the mid block.
TINY = dict(
    block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,),
    norm_num_groups=4, attention_head_dim=4,
)
B, H, W = 2, 8, 8
T = jnp.array([3, 700], jnp.int32)


def images(channels, seed=0):
    return jax.random.normal(jax.random.key(seed), (B, H, W, channels))


def param_shapes(model, x, cond=None):
    """The params tree as ShapeDtypeStructs: traced, never compiled (fast)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(1), x, T, cond))["params"]


def random_params(shapes, seed=0):
    """Random values for a params tree of shapes, drawn in numpy: compiling Flax's own
    initializers costs more than all the forward passes of this file together."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name in ("kernel", "embedding"):
            fan_in = math.prod(s.shape[:-1]) if name == "kernel" else 1
            return jnp.asarray(rng.normal(0, fan_in**-0.5, s.shape), jnp.float32)
        base = 1.0 if name == "scale" else 0.0  # GroupNorm scale near 1, biases near 0
        return jnp.asarray(base + 0.1 * rng.normal(size=s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
    """A 1-channel UNet with 3 classes, a 5-d context and dropout 0.5, its params, and ONE
    jitted forward pass (per value of ``train``) that the behaviour tests share, so the
    file compiles the model only a few times. ``run``'s defaults are the null label, the
    zero context and zero ControlNet residuals."""
    model = UNet(**TINY, num_classes=3, context_dim=5, dropout=0.5)
    x = images(1)
    params = random_params(param_shapes(model, x))
    zeros = [jnp.zeros((B, *s)) for s in model.skip_shapes(H, W)]

    @functools.partial(jax.jit, static_argnames="train")
    def forward(t, label, context, residuals, mid, key, *, train):
        return model.apply(
            {"params": params}, x, t, {"label": label, "context": context}, train=train,
            down_residuals=residuals, mid_residual=mid, rngs={"dropout": key},
        )

    def run(t=T, label=None, context=None, residuals=None, mid=None, *, train=False, seed=0):
        # Always arrays (never None) so every call reuses forward's compiled program.
        return forward(
            t,
            jnp.full((B,), 3, jnp.int32) if label is None else label,
            jnp.zeros((B, 5)) if context is None else context,
            zeros if residuals is None else residuals,
            zeros[-1] if mid is None else mid,
            jax.random.key(seed),
            train=train,
        )

    return model, params, run, x


def test_output_shapes_and_dtype(tiny):
    model, _, run, x = tiny
    out = run()
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # Every cond form, 1 and 3 channels, out_channels: shapes by tracing only.
    label, context = jnp.array([0, 2]), jnp.ones((B, 5))
    for cond in (None, label, context, {"label": label, "context": context, "hint": x}):
        out = jax.eval_shape(lambda c: model.init_with_output(jax.random.key(0), x, T, c)[0], cond)
        assert out.shape == x.shape and out.dtype == jnp.float32
    x3 = images(3)
    for unet, channels in ((UNet(**TINY), 3), (UNet(**TINY, out_channels=2), 2)):
        out = jax.eval_shape(lambda u=unet: u.init_with_output(jax.random.key(0), x3, T)[0])
        assert out.shape == (B, H, W, channels) and out.dtype == jnp.float32


def test_timestep_changes_output(tiny):
    _, _, run, _ = tiny
    assert float(jnp.max(jnp.abs(run() - run(t=T + 1)))) > 1e-4


def test_null_label_differs_from_real_label(tiny):
    _, _, run, _ = tiny
    null = run()
    assert float(jnp.max(jnp.abs(null - run(label=jnp.array([1, 1]))))) > 1e-4
    assert float(jnp.max(jnp.abs(null - run(context=jnp.ones((B, 5)))))) > 1e-4


def test_split_cond_fills_null_label_and_zero_context():
    label, context = jnp.array([0, 2]), jnp.ones((B, 5))
    kw = dict(batch=B, num_classes=3, context_dim=5)
    lab, ctx = split_cond(None, **kw)
    np.testing.assert_array_equal(lab, [3, 3])
    np.testing.assert_array_equal(ctx, np.zeros((B, 5)))
    lab, ctx = split_cond(label, **kw)
    np.testing.assert_array_equal(lab, label)
    np.testing.assert_array_equal(ctx, np.zeros((B, 5)))
    lab, ctx = split_cond(context, **kw)
    np.testing.assert_array_equal(lab, [3, 3])
    np.testing.assert_array_equal(ctx, context)
    lab, ctx = split_cond({"label": label, "context": context, "hint": 0}, **kw)
    np.testing.assert_array_equal(lab, label)
    np.testing.assert_array_equal(ctx, context)
    assert split_cond(None, batch=B, num_classes=None, context_dim=None) == (None, None)
    with pytest.raises(ValueError, match="num_classes"):
        split_cond(label, batch=B, num_classes=None, context_dim=5)
    with pytest.raises(ValueError, match="context_dim"):
        split_cond(context, batch=B, num_classes=3, context_dim=None)
    with pytest.raises(ValueError, match="unknown keys"):
        split_cond({"labels": label}, **kw)


def test_dropout_only_in_training(tiny):
    _, _, run, _ = tiny
    np.testing.assert_array_equal(run(seed=1), run(seed=2))  # train=False: no dropout
    train_a = run(train=True, seed=1)
    assert float(jnp.max(jnp.abs(train_a - run()))) > 1e-4
    assert float(jnp.max(jnp.abs(train_a - run(train=True, seed=2)))) > 1e-4
    np.testing.assert_array_equal(train_a, run(train=True, seed=1))


def test_controlnet_residuals(tiny):
    model, params, run, x = tiny
    shapes = model.skip_shapes(H, W)
    # conv_in, level 0: 1 resnet + downsampler, level 1: 1 resnet (no downsampler).
    assert shapes == [(8, 8, 8), (8, 8, 8), (4, 4, 8), (4, 4, 16)]
    zeros = [jnp.zeros((B, *s)) for s in shapes]
    # run() always passes (zero) residuals; without any residuals the output is the same.
    base = run()
    plain = jax.jit(model.apply)({"params": params}, x, T, jnp.full((B,), 3))
    np.testing.assert_allclose(plain, base, atol=1e-5)
    for k in range(len(shapes)):
        res = [z.at[:, 0, 0, 0].set(1.0) if i == k else z for i, z in enumerate(zeros)]
        out = run(residuals=res)
        assert float(jnp.max(jnp.abs(out - base))) > 1e-5, f"residual {k} had no effect"
    out = run(mid=jnp.ones((B, *shapes[-1])))
    assert float(jnp.max(jnp.abs(out - base))) > 1e-5
    with pytest.raises(ValueError, match="skip activations"):
        jax.eval_shape(lambda: model.apply({"params": params}, x, T, down_residuals=zeros[:-1]))


@pytest.mark.parametrize("flip, shift, dim", [(True, 0, 16), (False, 1, 16), (True, 0, 9)])
def test_timestep_embedding_matches_formula(flip, shift, dim):
    t = np.array([0.0, 1.0, 17.0, 999.0])
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - shift))
    angles = t[:, None] * freqs[None]
    parts = [np.cos(angles), np.sin(angles)] if flip else [np.sin(angles), np.cos(angles)]
    want = np.concatenate(parts + [np.zeros((4, dim % 2))], axis=1)
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift)
    assert got.shape == (4, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 sin of angles up to ~1e3


def _tiny_param_count(in_channels, num_classes):
    """UNet2DModel's parameter count for TINY, from the layer shapes by hand."""
    temb = 4 * 8
    conv = lambda i, o, k=3: k * k * i * o + o  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    gn = lambda c: 2 * c  # noqa: E731

    def resnet(i, o):
        return gn(i) + conv(i, o) + lin(temb, o) + gn(o) + conv(o, o) + (conv(i, o, 1) * (i != o))

    attn = lambda c: gn(c) + 4 * lin(c, c)  # noqa: E731
    total = lin(8, temb) + lin(temb, temb) + (num_classes + 1) * temb + conv(in_channels, 8)
    total += resnet(8, 8) + conv(8, 8)  # down 0 (8x8) + its downsampler
    total += resnet(8, 16) + attn(16)  # down 1 (4x4)
    total += 2 * resnet(16, 16) + attn(16)  # mid
    # up 0 (4x4): skips d1 (16 ch), then d0's downsampler (8 ch); + upsampler
    total += resnet(16 + 16, 16) + resnet(16 + 8, 16) + 2 * attn(16) + conv(16, 16)
    total += resnet(16 + 8, 8) + resnet(8 + 8, 8)  # up 1 (8x8): skips d0 resnet, conv_in
    return total + gn(8) + conv(8, in_channels)


def test_parameter_names_and_count():
    params = param_shapes(UNet(**TINY, num_classes=3), images(1))
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    for path, shape in {
        "time_embedding/linear_1/kernel": (8, 32),
        "time_embedding/linear_2/kernel": (32, 32),
        "class_embedding/embedding": (4, 32),
        "conv_in/kernel": (3, 3, 1, 8),
        "down_blocks_0/resnets_0/conv1/kernel": (3, 3, 8, 8),
        "down_blocks_0/downsamplers_0/conv/kernel": (3, 3, 8, 8),
        "down_blocks_1/resnets_0/conv_shortcut/kernel": (1, 1, 8, 16),
        "down_blocks_1/resnets_0/time_emb_proj/kernel": (32, 16),
        "down_blocks_1/attentions_0/to_out_0/kernel": (16, 16),
        "down_blocks_1/attentions_0/group_norm/scale": (16,),
        "mid_block/resnets_1/norm2/bias": (16,),
        "mid_block/attentions_0/to_q/bias": (16,),
        "up_blocks_0/resnets_1/conv1/kernel": (3, 3, 24, 16),
        "up_blocks_0/upsamplers_0/conv/kernel": (3, 3, 16, 16),
        "up_blocks_1/resnets_1/conv_shortcut/kernel": (1, 1, 16, 8),
        "conv_norm_out/scale": (8,),
        "conv_out/kernel": (3, 3, 8, 1),
    }.items():
        assert flat[path].shape == shape, path
    assert not any(k.startswith("down_blocks_0/attentions") for k in flat)
    assert not any(k.startswith("down_blocks_1/downsamplers") for k in flat)
    assert not any(k.startswith("up_blocks_1/upsamplers") for k in flat)
    assert "up_blocks_0/resnets_2/conv1/kernel" not in flat  # layers_per_block + 1 = 2
    count = sum(v.size for v in jax.tree.leaves(params))
    assert count == _tiny_param_count(1, 3)


def test_diffusers_kwargs():
    kw = diffusers_kwargs(UNet(**TINY, num_classes=3), in_channels=1)
    assert kw["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D")
    assert kw["up_block_types"] == ("AttnUpBlock2D", "UpBlock2D")
    assert kw["block_out_channels"] == (8, 16) and kw["layers_per_block"] == 1
    assert kw["num_class_embeds"] == 4 and kw["out_channels"] == 1
    assert kw["attention_head_dim"] == 4 and kw["norm_num_groups"] == 4
    with pytest.raises(ValueError, match="context"):
        diffusers_kwargs(UNet(**TINY, context_dim=4), in_channels=1)


def test_matches_diffusers_unet2dmodel():
    """Same weights -> same outputs as diffusers' UNet2DModel (skipped without diffusers)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    model = UNet(**TINY, num_classes=3)
    torch.manual_seed(0)
    twin = diffusers.UNet2DModel(**diffusers_kwargs(model, in_channels=3)).eval()
    x, labels = images(3), np.array([0, 3])
    # The table of the module docstring, as jaxdiff.pretrained implements it; it checks
    # that every name and shape matches the Flax tree.
    params = pretrained.params_from_state_dict(
        {k: v.detach().numpy() for k, v in twin.state_dict().items()},
        expected=param_shapes(model, x),
    )
    assert sum(p.numel() for p in twin.parameters()) == _tiny_param_count(3, 3)
    out = jax.jit(model.apply)({"params": params}, x, T, labels)
    with torch.no_grad():
        ref = twin(
            torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
            torch.from_numpy(np.array(T)).long(),
            torch.from_numpy(labels).long(),
        ).sample.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_bfloat16_compute(tiny):
    model, params, run, x = tiny
    bf16 = model.clone(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(param_shapes(bf16, x)))
    cond = {"label": jnp.array([0, 1]), "context": jnp.ones((B, 5))}
    out = jax.jit(bf16.apply)({"params": params}, x, T, cond)
    ref = run(label=cond["label"], context=cond["context"])
    assert out.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits (~0.4% per op); a few dozen layers stay within ~5%.
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert rel < 0.05, rel


def test_user_errors():
    x = images(1)
    with pytest.raises(ValueError, match="num_classes"):
        param_shapes(UNet(**TINY), x, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="norm_num_groups"):
        param_shapes(UNet(**{**TINY, "norm_num_groups": 3}), x)
    with pytest.raises(ValueError, match="divisible"):
        param_shapes(UNet(**{**TINY, "block_out_channels": (8, 8, 8, 8)}), x[:, :6, :6])


def test_remat_gives_same_gradients():
    """remat recomputes every resnet/attention block in the backward pass: the jaxpr has
    remat in it, and the gradients are those of the plain model."""
    x = images(1)
    plain = UNet(**TINY, num_classes=3)
    params = random_params(param_shapes(plain, x))

    def grads(model):
        def loss(p):
            return jnp.mean(model.apply({"params": p}, x, T, jnp.array([0, 3])) ** 2)

        assert ("remat" in str(jax.make_jaxpr(jax.grad(loss))(params))) == model.remat
        return jax.jit(jax.grad(loss))(params)

    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(plain.clone(remat=True))),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
