"""Tests for the Diffusion Transformer (Peebles & Xie 2023) in jaxdiff/models/dit.py."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import build
from jaxdiff.models.dit import (
    DiT,
    DiTBlock,
    dit_config,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)

TINY = dict(hidden_size=32, depth=2, num_heads=4)


@jax.jit
def _perturb(params, key, scale=0.1):
    """Adds noise to every parameter so zero-initialised layers give non-trivial outputs."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


@pytest.fixture(scope="module")
def tiny():
    """A tiny label+context DiT, its initial params and 8x8x3 inputs (init once: it is slow)."""
    model = DiT(patch_size=2, num_classes=10, context_dim=5, **TINY)
    x, t, y = _inputs(jax.random.key(1), (4, 8, 8, 3))
    context = jax.random.normal(jax.random.key(2), (4, 5))
    params = jax.jit(model.init)(jax.random.key(0), x, t, y)["params"]
    return model, params, x, t, y, context


def _inputs(key, shape, num_classes=10):
    kx, kt, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, shape)
    t = jax.random.randint(kt, (shape[0],), 0, 1000)
    y = jax.random.randint(ky, (shape[0],), 0, num_classes)
    return x, t, y


@pytest.mark.parametrize(
    "patch_size,size,channels", list(itertools.product((2, 4, 8), (8, 16, 32), (1, 3)))
)
def test_output_shape(patch_size, size, channels):
    model = DiT(patch_size=patch_size, num_classes=10, hidden_size=32, depth=1, num_heads=4)
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    t = y = jax.ShapeDtypeStruct((2,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
    out = jax.eval_shape(model.apply, variables, x, t, y)
    assert out.shape == x.shape and out.dtype == jnp.float32


def test_output_shape_non_square_and_out_channels():
    model = DiT(patch_size=4, out_channels=2, **TINY)
    x = jax.ShapeDtypeStruct((3, 8, 16, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((3,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    assert jax.eval_shape(model.apply, variables, x, t).shape == (3, 8, 16, 2)


def test_indivisible_image_size_raises():
    model = DiT(patch_size=4, **TINY)
    x = jax.ShapeDtypeStruct((1, 10, 12, 1), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        jax.eval_shape(model.init, jax.random.key(0), x, t)


def test_zero_output_and_identity_blocks_at_init(tiny):
    model, params, x, t, y, context = tiny
    cond = {"label": y, "context": context}
    assert jnp.all(jax.jit(model.apply)({"params": params}, x, t, cond) == 0.0)

    # Each of the model's blocks, with its initial params, is exactly the identity.
    apply_block = jax.jit(DiTBlock(hidden_size=32, num_heads=4).apply)
    tokens = jax.random.normal(jax.random.key(3), (2, 16, 32))
    c = jax.random.normal(jax.random.key(4), (2, 32))
    for i in range(TINY["depth"]):
        out = apply_block({"params": params[f"blocks_{i}"]}, tokens, c)
        np.testing.assert_array_equal(out, tokens)


@pytest.mark.parametrize("patch_size", [2, 4, 8])
def test_patchify_round_trip_and_conv_equivalence(patch_size):
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 3)).astype(np.float32)
    tokens = patchify(x, patch_size)
    assert tokens.shape == (2, (16 // patch_size) * (8 // patch_size), patch_size**2 * 3)
    np.testing.assert_array_equal(
        unpatchify(tokens, height=16, width=8, patch_size=patch_size), x
    )
    # The patch-embedding conv (as nn.Conv computes it) is a Dense layer on the tokens.
    kernel = np.random.default_rng(1).normal(size=(patch_size, patch_size, 3, 32))
    kernel = kernel.astype(np.float32)
    conv_out = jax.lax.conv_general_dilated(
        x, kernel, (patch_size, patch_size), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ).reshape(2, -1, 32)
    dense_out = tokens @ kernel.reshape(-1, 32)
    np.testing.assert_allclose(conv_out, dense_out, atol=1e-5)


def _reference_2d_sincos_pos_embed(embed_dim, grid_size):
    """MAE/DiT get_2d_sincos_pos_embed, written out as in facebookresearch/DiT models.py."""

    def embed_1d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w goes first
    grid = grid.reshape([2, 1, grid_size, grid_size])
    emb_h = embed_1d(embed_dim // 2, grid[0])
    emb_w = embed_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


@pytest.mark.parametrize("embed_dim,grid_size", [(32, 4), (384, 16), (1152, 2)])
def test_pos_embed_matches_reference(embed_dim, grid_size):
    ours = sincos_pos_embed_2d(embed_dim, grid_size, grid_size)
    ref = _reference_2d_sincos_pos_embed(embed_dim, grid_size)
    assert ours.shape == (grid_size * grid_size, embed_dim)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_bf16_agrees_with_fp32(tiny):
    fp32, params, x, t, y, _ = tiny
    bf16 = fp32.clone(dtype=jnp.bfloat16)
    params = _perturb(params, jax.random.key(2))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out32 = jax.jit(fp32.apply)({"params": params}, x, t, y)
    out16 = jax.jit(bf16.apply)({"params": params}, x, t, y)
    assert out16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out32)))
    assert scale > 0.1  # the perturbation made the output non-trivial
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 0.2%); through 2 blocks the
    # error measured ~0.5% of the output scale (3 seeds); allow 2%.
    np.testing.assert_allclose(out16, out32, atol=0.02 * scale)
    assert float(jnp.max(jnp.abs(out16 - out32))) > 0  # bf16 was really used


def test_remat_gives_same_gradients(tiny):
    plain, params, x, t, y, _ = tiny
    remat = plain.clone(remat=True)
    params = _perturb(params, jax.random.key(2))

    def grads(model):
        loss = lambda p: jnp.mean(model.apply({"params": p}, x, t, y) ** 2)
        assert ("remat" in str(jax.make_jaxpr(jax.grad(loss))(params))) == model.remat
        return jax.jit(jax.grad(loss))(params)

    g_plain, g_remat = grads(plain), grads(remat)
    assert jax.tree.structure(g_plain) == jax.tree.structure(g_remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(jnp.any(g != 0) for g in jax.tree.leaves(g_plain))


def test_null_condition(tiny):
    model, params, x, t, y, context = tiny
    assert params["y_embedder"]["embedding"].shape == (11, 32)  # last row = null label
    params = _perturb(params, jax.random.key(2))
    apply = jax.jit(lambda cond: model.apply({"params": params}, x, t, cond))
    null = jnp.full_like(y, 10)
    assert float(jnp.max(jnp.abs(apply(y) - apply(null)))) > 1e-3
    # A missing label/context means the null one; zeros are the null context.
    np.testing.assert_allclose(
        apply(None), apply({"label": null, "context": 0 * context}), atol=1e-6
    )
    np.testing.assert_array_equal(apply(y), apply({"label": y}))
    assert float(jnp.max(jnp.abs(apply({"label": y, "context": context}) - apply(y)))) > 1e-3
    with pytest.raises(ValueError, match="num_classes=None"):
        jax.eval_shape(DiT(patch_size=2, **TINY).init, jax.random.key(0), x, t, y)


def test_presets_and_build():
    assert dit_config("XL", patch_size=2) == dict(
        depth=28, hidden_size=1152, num_heads=16, patch_size=2
    )
    assert dit_config("S", patch_size=8)["hidden_size"] == 384
    with pytest.raises(ValueError, match="patch_size"):
        dit_config("S", patch_size=3)
    model = build(dict(name="dit", **dit_config("B", patch_size=4), dtype="bfloat16"))
    assert isinstance(model, DiT) and model.depth == 12 and model.dtype == jnp.bfloat16


@pytest.mark.parametrize("size,millions", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_parameter_counts_match_paper(size, millions):
    # Paper table 4 (ImageNet 256: 32x32x4 latents, 1000 classes, learn_sigma doubles the
    # output channels); the reference counts its frozen pos_embed as a parameter too.
    model = DiT(**dit_config(size, patch_size=2), num_classes=1000, out_channels=8)
    x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
    n_params += 16 * 16 * model.hidden_size  # the reference's frozen pos_embed
    assert abs(n_params / 1e6 - millions) < 1
    if size == "XL":
        assert n_params == 675_129_632  # "DiT Parameters" printed by the reference train.py


@pytest.mark.parametrize("name", ["mnist_dit", "digits_dit"])
def test_dit_configs_build(name):
    import importlib

    from experiments.runs import builders, kinds, validation


    config = importlib.import_module(f"configs.{name}").get_config()
    base = importlib.import_module(f"configs.{name.removesuffix('_dit')}").get_config()
    assert config.data == base.data and config.diffusion == base.diffusion
    validation.validate_config(config, num_devices=1)
    model = kinds.build_model(config)
    assert isinstance(model, DiT) and builders.cond_spec(model) == (10, None)
    x = jnp.zeros(builders.image_shape(config, batch=2))
    t = jnp.zeros((2,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    assert jax.eval_shape(model.apply, variables, x, t).shape == x.shape


@pytest.mark.slow
def test_training_lowers_denoising_loss():
    """A tiny DiT fits a fixed set of 8x8 bar images: the eps-loss drops well below its
    value at initialisation (~1.0 = E[eps^2], since the zero-initialised model outputs 0)."""
    from jaxdiff import losses, optim, schedules, train

    rng = np.random.default_rng(0)
    labels = np.arange(16) % 4
    images = -np.ones((16, 8, 8, 1), np.float32)
    for i, label in enumerate(labels):  # a bar whose orientation/position is the label
        pos = rng.integers(0, 8)
        if label % 2:
            images[i, :, pos] = 1.0
        else:
            images[i, pos, :] = 1.0
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels, jnp.int32)}

    model = DiT(patch_size=2, num_classes=4, hidden_size=32, depth=1, num_heads=4)
    schedule = schedules.cosine(100)
    loss_fn = losses.make_denoising_loss(
        model.apply, schedule, prediction="eps", cond_drop_prob=0.1, num_classes=4
    )
    optimizer = optim.make_optimizer(learning_rate=3e-3, warmup_steps=20, ema_decay=0.99)
    t0 = jnp.zeros((16,), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), batch["image"], t0, batch["label"])["params"]
    mesh = train.make_mesh()
    state = train.create_train_state(params, optimizer, jax.random.key(1))
    step = train.make_train_step(loss_fn, optimizer, mesh)
    sharded = train.shard_batch(batch, mesh)

    losses_seen = []
    for _ in range(120):
        state, metrics = step(state, sharded)
        losses_seen.append(metrics["loss"])
    losses_seen = np.asarray(jax.device_get(losses_seen))
    initial, final = losses_seen[0], losses_seen[-20:].mean()
    # Step 0 sees the zero-initialised model: its loss is the mean of 16*64 eps^2 values.
    np.testing.assert_allclose(initial, 1.0, atol=0.2)
    assert final < 0.5 * initial, (initial, final)


@pytest.mark.slow
def test_works_with_every_prediction_sampler_and_guidance(tiny):
    """The DiT slots into the same loss, samplers and CFG wrapper as the UNet."""
    from jaxdiff import guidance, losses, samplers, schedules

    model, params, x, _, y, _ = tiny
    params = _perturb(params, jax.random.key(3))
    schedule = schedules.linear(10)
    for prediction in ("eps", "x0", "v"):
        loss_fn = losses.make_denoising_loss(
            model.apply, schedule, prediction=prediction, num_classes=10
        )
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, {"image": x, "label": y}, jax.random.key(4)
        )
        assert np.isfinite(loss) and loss > 0
        assert jax.tree.reduce(lambda a, g: a + float(jnp.abs(g).sum()), grads, 0.0) > 0

    def denoise(x_t, t, c):
        return model.apply({"params": params}, x_t, t, c)

    guided = guidance.cfg(denoise, guidance_scale=2.0, num_classes=10)
    outs = {}
    for name, fn in [("ddpm", samplers.ddpm), ("ddpm_no_noise", samplers.ddpm_no_noise),
                     ("ddim", samplers.ddim), ("ddim_w0", samplers.ddim)]:
        out, _ = fn(denoise if name == "ddim_w0" else guided, schedule, jax.random.key(5),
                    x.shape, cond=y, prediction="v")
        assert out.shape == x.shape and np.isfinite(np.asarray(out)).all()
        outs[name] = out
    # Guidance really acts on the DiT: w = 2 moves the DDIM sample away from w = 0's.
    assert float(jnp.abs(outs["ddim"] - outs["ddim_w0"]).max()) > 1e-3
