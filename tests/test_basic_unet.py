"""Tests for jaxdiff.models.basic_unet (the HF course's BasicUNet)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models.basic_unet import BasicUNet


def _random_params(model, x):
    """Float32 params from numpy: kernels ~ N(0, 1/fan_in), small random biases."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, None)
    rng = np.random.default_rng(0)

    def fill(path, p):
        noise = rng.normal(size=p.shape).astype(np.float32)
        if "kernel" in jax.tree_util.keystr(path):
            return jnp.asarray(noise / np.sqrt(np.prod(p.shape[:-1])))
        return jnp.asarray(0.1 * noise)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", [16, 28])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(size, channels):
    model = BasicUNet()
    x = jnp.ones((2, size, size, channels))
    t = jnp.zeros((2,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    out = jax.eval_shape(model.apply, variables, x, t, jnp.ones((2, 5)))
    assert out.shape == (2, size, size, channels)
    assert out.dtype == jnp.float32
    two = BasicUNet(out_channels=2)
    out = jax.eval_shape(two.apply, jax.eval_shape(two.init, jax.random.key(0), x, t), x, t)
    assert out.shape == (2, size, size, 2)


def test_param_count_is_the_courses():
    """The course prints sum(p.numel() for p in BasicUNet().parameters()) = 309057."""
    conv5 = lambda cin, cout: cin * cout * 25 + cout  # 5x5 kernel + bias
    by_hand = sum(
        conv5(a, b) for a, b in [(1, 32), (32, 64), (64, 64), (64, 64), (64, 32), (32, 1)]
    )
    assert by_hand == 309_057
    shapes = jax.eval_shape(BasicUNet().init, jax.random.key(0), jnp.ones((1, 28, 28, 1)), None)
    assert _count(shapes) == 309_057
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))


@pytest.fixture(scope="module")
def mnist_like():
    model = BasicUNet()
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1.0, maxval=1.0)
    variables = {"params": _random_params(model, x)["params"]}
    return model, variables, x


def test_ignores_t_and_cond(mnist_like):
    model, variables, x = mnist_like
    apply = jax.jit(model.apply)
    base = apply(variables, x, jnp.zeros((3,), jnp.int32), None)
    moved = apply(variables, x, jnp.array([5, 500, 999]), None)
    np.testing.assert_array_equal(base, moved)
    assert float(jnp.std(base)) > 1e-3


def test_final_activation_is_silu_of_linear_output(mnist_like):
    model, variables, x = mnist_like
    linear = jax.jit(model.apply)(variables, x, None)
    course = jax.jit(BasicUNet(final_activation=True).apply)(variables, x, None)
    np.testing.assert_allclose(course, jax.nn.silu(linear), rtol=1e-5, atol=1e-6)
    assert float(linear.min()) < -0.3  # below SiLU's minimum -0.278: [-1, 1] outputs need it


def test_matches_the_pytorch_course_model(mnist_like):
    """Our weights in the course's PyTorch BasicUNet (its code; `l` renamed `layer`) give our
    output: checks the skip order, nearest upsampling and kernel layout."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model, variables, x = mnist_like

    class CourseBasicUNet(nn.Module):  # HF diffusion-models-class, unit 1
        def __init__(self, in_channels=1, out_channels=1):
            super().__init__()
            self.down_layers = nn.ModuleList(
                [
                    nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
                    nn.Conv2d(32, 64, kernel_size=5, padding=2),
                    nn.Conv2d(64, 64, kernel_size=5, padding=2),
                ]
            )
            self.up_layers = nn.ModuleList(
                [
                    nn.Conv2d(64, 64, kernel_size=5, padding=2),
                    nn.Conv2d(64, 32, kernel_size=5, padding=2),
                    nn.Conv2d(32, out_channels, kernel_size=5, padding=2),
                ]
            )
            self.act = nn.SiLU()
            self.downscale = nn.MaxPool2d(2)
            self.upscale = nn.Upsample(scale_factor=2)

        def forward(self, x):
            h = []
            for i, layer in enumerate(self.down_layers):
                x = self.act(layer(x))
                if i < 2:
                    h.append(x)
                    x = self.downscale(x)
            for i, layer in enumerate(self.up_layers):
                if i > 0:
                    x = self.upscale(x)
                    x += h.pop()
                x = self.act(layer(x))
            return x

    net = CourseBasicUNet()
    params = variables["params"]
    layers = [*net.down_layers, *net.up_layers]
    names = [f"down_{i}" for i in range(3)] + [f"up_{i}" for i in range(3)]
    with torch.no_grad():
        for layer, name in zip(layers, names, strict=True):
            kernel = np.asarray(params[name]["kernel"])  # (kh, kw, in, out) -> (out, in, kh, kw)
            layer.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            layer.bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))
        expected = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    expected = expected.numpy().transpose(0, 2, 3, 1)
    got = jax.jit(BasicUNet(final_activation=True).apply)(variables, x, None)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_close_to_float32(mnist_like):
    model, variables, x = mnist_like
    ref = jax.jit(model.apply)(variables, x, None)
    bf16 = jax.jit(BasicUNet(dtype=jnp.bfloat16).apply)(variables, x, None)
    assert bf16.dtype == jnp.float32
    err = float(jnp.abs(bf16 - ref).max())
    assert 0.0 < err < 0.05 * float(jnp.abs(ref).max())


def test_size_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(BasicUNet().init, jax.random.key(0), jnp.ones((1, 30, 30, 1)), None)
