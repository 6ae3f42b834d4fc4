"""Tests for jaxdiff.models.context_unet (the sprites seed's ContextUnet)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models.context_unet import ContextUnet

T = 500
# n_feat=8 is the smallest the GroupNorm(8) layers allow: the tests are about wiring, not size.
SMALL = dict(num_timesteps=T, n_feat=8, n_cfeat=5, height=16)


def _random_params(model, *args):
    """Non-degenerate float32 params from numpy (jitted flax init is slow to compile on CPU).

    Kernels ~ N(0, 1/fan_in); biases and norm scales/offsets get noise too, so that a zero
    context still gives a non-trivial embedding (its output is the MLP's biases)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    rng = np.random.default_rng(0)

    def fill(path, p):
        name = jax.tree_util.keystr(path)
        noise = rng.normal(size=p.shape).astype(np.float32)
        if "kernel" in name:
            return jnp.asarray(noise / np.sqrt(np.prod(p.shape[:-1])))
        if "scale" in name:
            return jnp.asarray(1.0 + 0.1 * noise)
        return jnp.asarray(0.1 * noise)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def rgb():
    """A small 3-channel model, its params, a jitted apply, and a batch of 4 inputs."""
    model = ContextUnet(**SMALL)
    kx, kc = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (4, 16, 16, 3))
    t = jnp.array([0, 100, 250, 499], jnp.int32)
    context = jax.random.uniform(kc, (4, 5))
    variables = _random_params(model, x, t, context)
    apply = jax.jit(model.apply)  # one compile per cond structure/dtype
    return model, variables, apply, x, t, context


def _out_shape(model, x, cond=None):
    t = jnp.zeros((x.shape[0],), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, cond)
    return jax.eval_shape(model.apply, variables, x, t, cond)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_context", [False, True])
def test_output_shape_and_dtype(channels, with_context):
    x = jnp.ones((2, 16, 16, channels))
    out = _out_shape(ContextUnet(**SMALL), x, jnp.ones((2, 5)) if with_context else None)
    assert out.shape == (2, 16, 16, channels)
    assert out.dtype == jnp.float32


def test_out_channels_and_other_height():
    out = _out_shape(
        ContextUnet(**{**SMALL, "height": 28}, out_channels=2), jnp.ones((1, 28, 28, 1))
    )
    assert out.shape == (1, 28, 28, 2)


def test_timestep_changes_output(rgb):
    model, variables, apply, x, t, context = rgb
    a = apply(variables, x, t, context)
    b = apply(variables, x, t + 1, context)
    assert bool(jnp.all(jnp.isfinite(a)))
    # every example's output moves: t enters through temb1/temb2, added to every pixel
    diff = jnp.abs(a - b).reshape(4, -1).max(axis=1)
    assert bool(jnp.all(diff > 1e-6)), diff


def test_context_changes_output_and_none_is_zero_context(rgb):
    model, variables, apply, x, t, context = rgb
    with_context = apply(variables, x, t, context)
    zeros = apply(variables, x, t, jnp.zeros_like(context))
    unconditional = apply(variables, x, t, None)
    assert bool(jnp.all(jnp.abs(with_context - zeros).reshape(4, -1).max(axis=1) > 1e-4))
    np.testing.assert_allclose(unconditional, zeros, rtol=1e-5, atol=1e-6)


def test_int_labels_equal_explicit_one_hot(rgb):
    model, variables, apply, x, t, _ = rgb
    labels = jnp.array([0, 4, 2, 5], jnp.int32)  # 5 == n_cfeat is the null label
    one_hot = jnp.array(
        [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], jnp.float32
    )
    np.testing.assert_allclose(
        apply(variables, x, t, labels), apply(variables, x, t, one_hot), rtol=1e-5, atol=1e-6
    )
    assert model.num_classes == model.context_dim == 5


def test_cond_forms_map_to_the_same_context():
    model = ContextUnet(**SMALL).bind({})  # _context has no params
    context = jnp.arange(10, dtype=jnp.float32).reshape(2, 5)
    labels = jnp.array([3, 5], jnp.int32)
    one_hot = jnp.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], jnp.float32)
    np.testing.assert_array_equal(model._context(context, batch=2), context)
    np.testing.assert_array_equal(model._context({"context": context, "hint": 0}, batch=2), context)
    np.testing.assert_array_equal(model._context(labels, batch=2), one_hot)
    np.testing.assert_array_equal(model._context({"label": labels}, batch=2), one_hot)
    np.testing.assert_array_equal(model._context(None, batch=2), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="both"):
        model._context({"context": context, "label": labels}, batch=2)
    with pytest.raises(ValueError, match="n_cfeat"):
        model._context(jnp.zeros((2, 3)), batch=2)
    with pytest.raises(ValueError, match="shape"):
        model._context(jnp.zeros((3,), jnp.int32), batch=2)


def test_examples_do_not_interact(rgb):
    """GroupNorm (not the seed's BatchNorm): an example's output ignores its batch mates,
    which batched classifier-free guidance relies on."""
    model, variables, apply, x, t, context = rgb
    other_mates = x.at[1:].set(3.0 * jnp.flip(x[1:], axis=1))
    np.testing.assert_allclose(
        apply(variables, x, t, context)[0],
        apply(variables, other_mates, t, context)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_matches_the_pytorch_seed_model(rgb):
    """Our weights in the seed's PyTorch ContextUnet (its code, with GroupNorm(8) for its
    BatchNorm2d and a learned 1x1 shortcut, the documented differences) give our output:
    checks the wiring (cemb * up + temb, concat orders, skips), t entering as (t + 1) / T,
    and the kernel layouts."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    model, variables, apply, x, t, context = rgb
    n, n_cfeat, h = SMALL["n_feat"], SMALL["n_cfeat"], SMALL["height"]

    class ResidualConvBlock(tnn.Module):
        def __init__(self, cin, cout, is_res=False):
            super().__init__()
            self.same_channels, self.is_res = cin == cout, is_res
            block = lambda i: tnn.Sequential(  # noqa: E731
                tnn.Conv2d(i, cout, 3, 1, 1), tnn.GroupNorm(8, cout), tnn.GELU())
            self.conv1, self.conv2 = block(cin), block(cout)
            if is_res and not self.same_channels:
                self.shortcut = tnn.Conv2d(cin, cout, 1)

        def forward(self, x):
            x2 = self.conv2(self.conv1(x))
            if not self.is_res:
                return x2
            return ((x if self.same_channels else self.shortcut(x)) + x2) / 1.414

    class UnetUp(tnn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.model = tnn.Sequential(tnn.ConvTranspose2d(cin, cout, 2, 2),
                                        ResidualConvBlock(cout, cout),
                                        ResidualConvBlock(cout, cout))

        def forward(self, x, skip):
            return self.model(torch.cat((x, skip), 1))

    def unet_down(cin, cout):
        return tnn.Sequential(ResidualConvBlock(cin, cout), ResidualConvBlock(cout, cout),
                              tnn.MaxPool2d(2))

    def embed_fc(din, dout):
        return tnn.Sequential(tnn.Linear(din, dout), tnn.GELU(), tnn.Linear(dout, dout))

    class SeedContextUnet(tnn.Module):
        def __init__(self, in_channels):
            super().__init__()
            self.init_conv = ResidualConvBlock(in_channels, n, is_res=True)
            self.down1, self.down2 = unet_down(n, n), unet_down(n, 2 * n)
            self.to_vec = tnn.Sequential(tnn.AvgPool2d(h // 4), tnn.GELU())
            self.timeembed1, self.timeembed2 = embed_fc(1, 2 * n), embed_fc(1, n)
            self.contextembed1 = embed_fc(n_cfeat, 2 * n)
            self.contextembed2 = embed_fc(n_cfeat, n)
            self.up0 = tnn.Sequential(tnn.ConvTranspose2d(2 * n, 2 * n, h // 4, h // 4),
                                      tnn.GroupNorm(8, 2 * n), tnn.ReLU())
            self.up1, self.up2 = UnetUp(4 * n, n), UnetUp(2 * n, n)
            self.out = tnn.Sequential(tnn.Conv2d(2 * n, n, 3, 1, 1), tnn.GroupNorm(8, n),
                                      tnn.ReLU(), tnn.Conv2d(n, in_channels, 3, 1, 1))

        def forward(self, x, t, c):  # t: the seed's t / T, shape (B, 1)
            x = self.init_conv(x)
            down1 = self.down1(x)
            down2 = self.down2(down1)
            hiddenvec = self.to_vec(down2)
            cemb1 = self.contextembed1(c).view(-1, 2 * n, 1, 1)
            temb1 = self.timeembed1(t).view(-1, 2 * n, 1, 1)
            cemb2 = self.contextembed2(c).view(-1, n, 1, 1)
            temb2 = self.timeembed2(t).view(-1, n, 1, 1)
            up1 = self.up0(hiddenvec)
            up2 = self.up1(cemb1 * up1 + temb1, down2)
            up3 = self.up2(cemb2 * up2 + temb2, down1)
            return self.out(torch.cat((up3, x), 1))

    p = variables["params"]

    def conv(m, f, transpose=False):
        k = np.asarray(f["kernel"])
        # Flax's ConvTranspose (transpose_kernel=False) is torch's with the kernel flipped.
        k = k[::-1, ::-1].transpose(2, 3, 0, 1) if transpose else k.transpose(3, 2, 0, 1)
        m.weight.copy_(torch.from_numpy(k.copy()))
        m.bias.copy_(torch.from_numpy(np.array(f["bias"])))

    def affine(m, f, weight="scale"):  # Linear (kernel transposed) or GroupNorm
        w = np.asarray(f[weight])
        m.weight.copy_(torch.from_numpy((w.T if weight == "kernel" else w).copy()))
        m.bias.copy_(torch.from_numpy(np.array(f["bias"])))

    def res(m, f):
        for i in (1, 2):
            conv(getattr(m, f"conv{i}")[0], f[f"conv{i}"])
            affine(getattr(m, f"conv{i}")[1], f[f"norm{i}"])
        if "shortcut" in f:
            conv(m.shortcut, f["shortcut"])

    net = SeedContextUnet(in_channels=x.shape[-1])
    with torch.no_grad():
        res(net.init_conv, p["init_conv"])
        for name in ("down1", "down2"):
            res(getattr(net, name)[0], p[name]["res1"])
            res(getattr(net, name)[1], p[name]["res2"])
        for name in ("up1", "up2"):
            up = getattr(net, name).model
            conv(up[0], p[name]["up"], transpose=True)
            res(up[1], p[name]["res1"])
            res(up[2], p[name]["res2"])
        for name in ("timeembed1", "timeembed2", "contextembed1", "contextembed2"):
            affine(getattr(net, name)[0], p[name]["dense1"], "kernel")
            affine(getattr(net, name)[2], p[name]["dense2"], "kernel")
        conv(net.up0[0], p["up0_conv"], transpose=True)
        affine(net.up0[1], p["up0_norm"])
        conv(net.out[0], p["out_conv1"])
        affine(net.out[1], p["out_norm"])
        conv(net.out[3], p["out_conv2"])
        seed_t = (np.asarray(t, np.float32) + 1.0) / T  # the seed's t / T, t in [1, T]
        expected = net(
            torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()),
            torch.from_numpy(seed_t[:, None]),
            torch.from_numpy(np.array(context)),
        ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(apply(variables, x, t, context), expected, rtol=1e-4, atol=1e-4)


def _torch_seed_param_count(*, in_channels, n_feat, n_cfeat, height):
    """The PyTorch seed's ``sum(p.numel() for p in ContextUnet(...).parameters())``, from
    its layer list (BatchNorm2d: weight + bias per channel; the 1x1 shortcut is built in
    forward(), so not a parameter)."""

    def conv(cin, cout, k):  # Conv2d and ConvTranspose2d: weight + bias
        return cin * cout * k * k + cout

    def norm(c):  # BatchNorm2d or GroupNorm: weight + bias
        return 2 * c

    def res_block(cin, cout):
        return conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3) + norm(cout)

    def embed_fc(din, dout):
        return din * dout + dout + dout * dout + dout

    n = n_feat
    init_conv = res_block(in_channels, n)
    down1 = res_block(n, n) + res_block(n, n)
    down2 = res_block(n, 2 * n) + res_block(2 * n, 2 * n)
    embeds = embed_fc(1, 2 * n) + embed_fc(1, n) + embed_fc(n_cfeat, 2 * n) + embed_fc(n_cfeat, n)
    up0 = conv(2 * n, 2 * n, height // 4) + norm(2 * n)
    up1 = conv(4 * n, n, 2) + 2 * res_block(n, n)
    up2 = conv(2 * n, n, 2) + 2 * res_block(n, n)
    out = conv(2 * n, n, 3) + norm(n) + conv(n, in_channels, 3)
    return init_conv + down1 + down2 + embeds + up0 + up1 + up2 + out


def test_param_count_matches_pytorch_seed():
    model = ContextUnet(num_timesteps=T, n_feat=64, n_cfeat=5, height=16)
    x = jnp.zeros((1, 16, 16, 3))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32))
    ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
    seed = _torch_seed_param_count(in_channels=3, n_feat=64, n_cfeat=5, height=16)
    assert seed == 1_480_771
    learned_shortcut = 3 * 64 + 64  # our init_conv's 1x1 conv (3 -> 64 channels)
    assert ours == seed + learned_shortcut
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))


def test_bfloat16_close_to_float32(rgb):
    model, variables, apply, x, t, context = rgb
    ref = apply(variables, x, t, context)
    bf16 = jax.jit(ContextUnet(**SMALL, dtype=jnp.bfloat16).apply)(variables, x, t, context)
    assert bf16.dtype == jnp.float32
    err = float(jnp.abs(bf16 - ref).max())
    # bfloat16 keeps 8 mantissa bits (~0.4% per rounding); 15 conv layers stay within a few %
    assert err < 0.05 * float(jnp.abs(ref).max())
    assert err > 0.0  # it really ran in bfloat16


def test_errors():
    t = jnp.zeros((1,), jnp.int32)
    x = jnp.zeros((1, 18, 18, 3))
    with pytest.raises(ValueError, match="divisible by 4"):
        _out_shape(ContextUnet(**{**SMALL, "height": 18}), x)
    with pytest.raises(ValueError, match="16x16"):
        _out_shape(ContextUnet(**SMALL), x)
    with pytest.raises(ValueError, match="n_cfeat"):
        jax.eval_shape(
            ContextUnet(**SMALL).init, jax.random.key(0), x[:, :16, :16], t, jnp.zeros((1, 3))
        )
