"""The FID Inception-V3 of pytorch-fid, in Flax, with its weights read from the ``.pth``.

FID (Heusel et al. 2017) as published is the Frechet distance between Gaussians fitted to
the 2048-d pool features of one particular network: the Inception-V3 graph of TensorFlow's
``inception-2015-12-05`` release, which the original TF FID code and pytorch-fid use. That
network differs from torchvision's Inception-V3 (Szegedy et al. 2016, "Rethinking the
Inception Architecture", fig. 5-7) in three places, which pytorch-fid patches and this module
copies:

* ``FIDInceptionA``/``C``/``E_1``: the 3x3 average pool of the pool branch leaves the zero
  padding out of the average (TF's ``count_include_pad=False``);
* ``FIDInceptionE_2`` (``Mixed_7c``): that pool is a 3x3 *max* pool;
* the 1008-class head (1000 ImageNet classes + 8 unused) is dropped: the features are the
  global average pool of ``Mixed_7c``.

Input handling is pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``:
images in [0, 1] are resized to 299x299 by bilinear interpolation with
``align_corners=False`` and no antialiasing (``F.interpolate``), then mapped to [-1, 1].
``resize_299`` does that resize as two matrix products whose rows hold PyTorch's two
bilinear weights (``interpolation_matrix``), so it matches ``F.interpolate`` at every size,
up and down.

The parameter tree mirrors the ``.pth`` state dict (``Mixed_6b.branch7x7_2.conv.weight`` ->
``params['Mixed_6b']['branch7x7_2']['conv']['kernel']``, transposed OIHW -> HWIO; the
batch norm's ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/``bias``/
``mean``/``var``), so loading is renaming and transposing.
"""

from __future__ import annotations

import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.pretrained.torch_pickle import load_torch_state_dict

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FEATURE_DIM = 2048
INPUT_SIZE = 299
BATCH_NORM_EPS = 1e-3  # torchvision's BasicConv2d (TF's value)


class FrozenBatchNorm(nn.Module):
    """Inference batch norm ``(x - mean) / sqrt(var + eps) * scale + bias`` (Ioffe & Szegedy
    2015, alg. 2, with the population statistics); all four vectors are params."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (jax.lax.rsqrt(var + BATCH_NORM_EPS) * scale) + bias


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm, ReLU (torchvision's ``BasicConv2d``)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def conv(features: int, kernel: int | tuple[int, int], name: str, *, strides: int = 1,
         padding: int | tuple[int, int] = 0) -> BasicConv2d:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (padding, padding) if isinstance(padding, int) else padding
    return BasicConv2d(features, kernel, strides, padding, name=name)


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """TF's 3x3/1 average pool: the zero padding is not counted (the FID patch)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
    """Mixed_5b/c/d (FIDInceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = conv(64, 1, "branch1x1")(x)
        b5 = conv(64, 5, "branch5x5_2", padding=2)(conv(48, 1, "branch5x5_1")(x))
        b3 = conv(64, 1, "branch3x3dbl_1")(x)
        b3 = conv(96, 3, "branch3x3dbl_2", padding=1)(b3)
        b3 = conv(96, 3, "branch3x3dbl_3", padding=1)(b3)
        bp = conv(self.pool_features, 1, "branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: the 35 -> 17 grid reduction (3x3/2 | 1x1-3x3-3x3/2 | maxpool/2)."""

    @nn.compact
    def __call__(self, x):
        b3 = conv(384, 3, "branch3x3", strides=2)(x)
        bd = conv(64, 1, "branch3x3dbl_1")(x)
        bd = conv(96, 3, "branch3x3dbl_2", padding=1)(bd)
        bd = conv(96, 3, "branch3x3dbl_3", strides=2)(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..e (FIDInceptionC): factorised 7x7 convolutions (1x7 and 7x1)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = conv(192, 1, "branch1x1")(x)
        b7 = conv(c7, 1, "branch7x7_1")(x)
        b7 = conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
        b7 = conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
        bd = conv(c7, 1, "branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd)
        bd = conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd)
        bd = conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd)
        bd = conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd)
        bp = conv(192, 1, "branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: the 17 -> 8 grid reduction."""

    @nn.compact
    def __call__(self, x):
        b3 = conv(320, 3, "branch3x3_2", strides=2)(conv(192, 1, "branch3x3_1")(x))
        b7 = conv(192, 1, "branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
        b7 = conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
        b7 = conv(192, 3, "branch7x7x3_4", strides=2)(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""

    max_pool: bool

    @nn.compact
    def __call__(self, x):
        b1 = conv(320, 1, "branch1x1")(x)
        b3 = conv(384, 1, "branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3),
                              conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3)], axis=-1)
        bd = conv(448, 1, "branch3x3dbl_1")(x)
        bd = conv(384, 3, "branch3x3dbl_2", padding=1)(bd)
        bd = jnp.concatenate([conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd),
                              conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd)], axis=-1)
        pooled = (nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))) if self.max_pool
                  else avg_pool_3x3(x))
        bp = conv(192, 1, "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's ``InceptionV3`` up to the final average pool: (B, H, W, 3) in [-1, 1]
    (already resized, normally to 299x299) -> (B, 2048) features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(32, 3, "Conv2d_1a_3x3", strides=2)(x)
        x = conv(32, 3, "Conv2d_2a_3x3")(x)
        x = conv(64, 3, "Conv2d_2b_3x3", padding=1)(x)
        x = max_pool_3x3_stride_2(x)
        x = conv(80, 1, "Conv2d_3b_1x1")(x)
        x = conv(192, 3, "Conv2d_4a_3x3")(x)
        x = max_pool_3x3_stride_2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return x.mean(axis=(1, 2))


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 rows of bilinear weights, as PyTorch's
    ``F.interpolate(mode='bilinear', align_corners=False)`` computes them (no antialias):
    source position ``max((i + 0.5) * in / out - 0.5, 0)`` rounded to float32 once (as
    PyTorch's CPU kernel computes it), between pixels ``floor`` and ``min(floor + 1, in - 1)``."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    # One rounding of scale * (i + 0.5) - 0.5, as the fused multiply-add of PyTorch's kernel.
    dst = np.arange(out_size, dtype=np.float64)
    src = np.maximum((scale * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low.astype(np.float32)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), np.float32(1) - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def resize_299(images: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 299, 299, C), bilinear as pytorch-fid resizes (see
    ``interpolation_matrix``)."""
    _, h, w, _ = images.shape
    rows = jnp.asarray(interpolation_matrix(h, INPUT_SIZE))
    cols = jnp.asarray(interpolation_matrix(w, INPUT_SIZE))
    precision = jax.lax.Precision.HIGHEST
    out = jnp.einsum("oh,bhwc->bowc", rows, images, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, out, precision=precision)


def params_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
    """The ``InceptionV3FID`` params of an FID Inception state dict (torchvision
    ``Inception3`` key names); the 1008-class ``fc`` head and ``num_batches_tracked`` are
    dropped. Raises ValueError when a parameter of the network is missing."""
    renames = {"weight": "scale", "running_mean": "mean", "running_var": "var"}
    params: dict[str, Any] = {}
    for key, value in state_dict.items():
        path = key.split(".")
        if path[0] in ("fc", "AuxLogits") or path[-1] == "num_batches_tracked":
            continue
        value = np.asarray(value, np.float32)
        if path[-2] == "conv":
            path[-1], value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        else:
            path[-1] = renames.get(path[-1], path[-1])
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    expected = jax.eval_shape(InceptionV3FID().init, jax.random.key(0),
                              jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))["params"]
    want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(
        expected)}
    try:
        got = {jax.tree_util.keystr(p): v.shape for p, v in
               jax.tree_util.tree_leaves_with_path(params)}
    except TypeError:
        got = {}
    if want != got:
        missing = sorted(set(want) - set(got))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(f"not an FID Inception-V3 state dict: missing {missing[:3]}, "
                         f"wrong shapes {wrong[:3]}, unexpected {sorted(set(got) - set(want))[:3]}")
    return params


def load_pytorch_fid_weights(path: str | pathlib.Path) -> dict[str, Any]:
    """Params of ``InceptionV3FID`` from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
    (read without torch: ``jaxdiff.pretrained.torch_pickle``)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {path}: download {FID_WEIGHTS_URL}")
    return params_from_state_dict(load_torch_state_dict(path))
