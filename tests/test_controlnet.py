"""ControlNet: exactly the base model at init, frozen base, CFG keeps the hint, EMA works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff as jd
from jaxdiff.models.controlnet import ControlledUNet, ControlNet, copy_from_unet
from jaxdiff.models.unet import UNet

UNET = UNet(
    block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,), mid_attention=False,
    norm_num_groups=4, num_classes=3,
)


@pytest.fixture(scope="module")
def setup():
    """(model, base params, x, t, cond, ControlNet params at init); initialised once."""
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    t = jnp.array([0, 5, 10, 19])
    labels = jnp.array([0, 1, 2, 1])
    base = jax.jit(UNET.init)(jax.random.key(1), x, t, labels)["params"]
    # A base that is not at its own init, so "equal to the base" is not a coincidence.
    base = jax.tree.map(lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), base)
    model = ControlledUNet(UNET, ControlNet.from_unet(UNET, hint_channels=(4, 8)), base)
    hint = (jax.random.uniform(jax.random.key(2), (4, 8, 8, 1)) > 0.7).astype(jnp.float32)
    params = jax.jit(model.init)(jax.random.key(3), x, t)["params"]
    return model, base, x, t, {"label": labels, "hint": hint}, params


def test_at_init_the_output_is_exactly_the_base_models(setup):
    model, base, x, t, cond, params = setup
    model = ControlledUNet(UNET, model.controlnet, base, conditioning_scale=2.0)
    out = model.apply({"params": params}, x, t, cond)
    np.testing.assert_array_equal(out, UNET.apply({"params": base}, x, t, cond["label"]))
    # The copy is the base's encoder; the zero convs and the hint encoder's output are zero.
    np.testing.assert_array_equal(params["down_blocks_0"]["resnets_0"]["conv1"]["kernel"],
                                  base["down_blocks_0"]["resnets_0"]["conv1"]["kernel"])
    np.testing.assert_array_equal(params["class_embedding"]["embedding"],
                                  base["class_embedding"]["embedding"])
    assert not any(jnp.any(p) for p in jax.tree.leaves(params["controlnet_mid_block"]))
    assert len([k for k in params if k.startswith("controlnet_down_blocks_")]) == len(
        UNET.skip_shapes(8, 8)
    )


def test_residuals_scale_with_conditioning_scale(setup):
    model, base, x, t, cond, params = setup
    params = jax.tree.map(lambda p: p + 0.01, params)  # zero convs no longer zero
    down, mid = model.controlnet.apply({"params": params}, x, t, cond)
    for scale in (0.0, 0.5):
        scaled = ControlledUNet(UNET, model.controlnet, base, conditioning_scale=scale)
        want = UNET.apply(
            {"params": base}, x, t, cond["label"],
            down_residuals=[scale * r for r in down], mid_residual=scale * mid,
        )
        np.testing.assert_array_equal(scaled.apply({"params": params}, x, t, cond), want)
    base_out = UNET.apply({"params": base}, x, t, cond["label"])
    assert float(jnp.abs(model.apply({"params": params}, x, t, cond) - base_out).max()) > 1e-3


@pytest.mark.slow
def test_training_changes_the_controlnet_only_and_the_optimizer_never_sees_the_base(setup):
    model, base, x, t, cond, params = setup
    base_before = jax.device_get(base)
    schedule = jd.schedules.cosine(20)
    loss_fn = jd.losses.make_denoising_loss(
        model.apply, schedule, cond_drop_prob=0.5, num_classes=3
    )
    optimizer = jd.optim.make_optimizer(learning_rate=1e-2, ema_decay=0.9, ema_start_step=2)
    params = jax.tree.map(jnp.copy, params)  # the train step donates its state
    start = jax.device_get(params)
    mesh = jd.train.make_mesh(jax.devices()[:1])
    state = jd.train.create_train_state(params, optimizer, jax.random.key(4))
    # Nothing of the base in the optimizer state: its only param-shaped trees are the
    # ControlNet's (Adam's two moments and the EMA).
    structure = jax.tree.structure(start)
    param_like = [
        s for s in jax.tree.leaves(
            state.opt_state, is_leaf=lambda n: jax.tree.structure(n) == structure
        ) if jax.tree.structure(s) == structure
    ]
    assert len(param_like) == 3
    n_opt = sum(np.size(leaf) for leaf in jax.tree.leaves(state.opt_state))
    assert 0 <= n_opt - 3 * sum(p.size for p in jax.tree.leaves(start)) < 16  # + counters
    step = jd.train.make_train_step(loss_fn, optimizer, mesh)
    batch = {"image": jnp.tanh(x), **cond}
    for _ in range(3):
        state, metrics = step(state, batch)
    assert float(metrics["skipped"]) == 0
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(model.base_params), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(state.params), strict=True)
    ]
    assert sum(moved) > len(moved) // 2
    ema = jd.optim.ema_params(state.opt_state)
    assert jax.tree.structure(ema) == structure
    # EMA after a delayed start: not the raw params, not the start.
    kernel = state.params["controlnet_mid_block"]["kernel"]
    assert not np.array_equal(ema["controlnet_mid_block"]["kernel"], kernel)
    # The trained ControlNet now makes the hint matter.
    out = model.apply({"params": state.params}, x, t, cond)
    other = model.apply({"params": state.params}, x, t, {**cond, "hint": 1.0 - cond["hint"]})
    assert float(jnp.abs(out - other).max()) > 1e-4


def test_cfg_drops_the_label_and_keeps_the_hint(setup):
    model, base, x, t, cond, params = setup
    params = jax.tree.map(lambda p: p + 0.01, params)
    denoise = lambda x_t, tt, c: model.apply({"params": params}, x_t, tt, c)
    guided = jd.guidance.cfg(denoise, guidance_scale=2.0, num_classes=3)(x, t, cond)
    null = {"label": jnp.full((4,), 3), "hint": cond["hint"]}
    want = 3.0 * denoise(x, t, cond) - 2.0 * denoise(x, t, null)
    np.testing.assert_allclose(guided, want, rtol=1e-5, atol=1e-5)


def test_bad_hints_and_bases_are_refused(setup):
    model, base, x, t, cond, params = setup
    with pytest.raises(ValueError, match="needs cond"):
        model.apply({"params": params}, x, t, cond["label"])
    with pytest.raises(ValueError, match="hint has shape"):
        model.apply({"params": params}, x, t, {**cond, "hint": jnp.zeros((4, 4, 4, 1))})
    other = UNet(
        block_out_channels=(8, 8), layers_per_block=1, attention_levels=(1,), norm_num_groups=4,
        num_classes=3,
    )
    shapes = jax.eval_shape(other.init, jax.random.key(1), x, t, cond["label"])["params"]
    other_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    with pytest.raises(ValueError, match="does not match"):
        copy_from_unet(params, other_params)
