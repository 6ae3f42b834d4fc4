"""jaxdiff.inception and jaxdiff.fid.inception_features against pytorch-fid's InceptionV3.

The twin is pytorch-fid's own network with random weights (its published weights are a
download), saved with torch.save and read back by ``load_pytorch_fid_weights``; the twins
skip without torch, torchvision and pytorch_fid (experiments.bench.pytorch_fid_twin.NEEDS).
The pickle reader and the sharding check need no torch.
"""

import io
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from jaxdiff import fid, inception
from jaxdiff.pretrained import torch_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytorch_fid_or_skip():
    from experiments.bench import pytorch_fid_twin

    try:
        pytorch_fid_twin.import_pytorch_fid()
    except ImportError as e:
        pytest.skip(str(e))
    return pytorch_fid_twin


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """(pytorch-fid model with random weights, jaxdiff params read from its saved .pth)."""
    import torch

    pytorch_fid_twin = pytorch_fid_or_skip()
    model, state_dict = pytorch_fid_twin.random_fid_inception(seed=0)
    path = tmp_path_factory.mktemp("fid") / "pt_inception.pth"
    torch.save(state_dict, path)
    return model, inception.load_pytorch_fid_weights(path), pytorch_fid_twin


def smooth_images(seed, n, size, channels):
    """Images in [0, 1] with structure at several scales (random noise alone gives nearly
    equal features for every image)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (n, 4, 4, channels))
    up = np.kron(coarse, np.ones((1, -(-size // 4), -(-size // 4), 1)))[:, :size, :size]
    return np.clip(0.7 * up + 0.3 * rng.uniform(0, 1, up.shape), 0, 1).astype(np.float32)


def assert_twin_features(twin, size, *, quantize, channels=3, n=2):
    model, params, pytorch_fid_twin = twin
    images_01 = smooth_images(size + channels, n, size, channels)
    if quantize:  # pytorch-fid reads a PNG: uint8 / 255
        levels = np.round(images_01 * 255)
        images_01, ours_in = levels / 255.0, levels / 127.5 - 1.0
    else:
        ours_in = images_01 * 2.0 - 1.0
    rgb = np.repeat(images_01, 3, axis=-1) if channels == 1 else images_01
    expected = pytorch_fid_twin.torch_features(model, rgb)
    got = fid.inception_features(params, ours_in.astype(np.float32), quantize=quantize)
    assert got.shape == (n, 2048)
    # The features must differ between images by far more than the tolerance.
    assert np.abs(expected[0] - expected[1]).max() > 1e-2 * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_features_equal_pytorch_fid_32x32_uint8(twin):
    assert_twin_features(twin, 32, quantize=True)


@pytest.mark.slow
@pytest.mark.parametrize("size,quantize,channels", [
    (32, False, 3), (64, False, 1), (64, True, 1), (299, False, 3), (299, True, 3),
    (512, True, 3), (512, False, 3)])
def test_features_equal_pytorch_fid(twin, size, quantize, channels):
    assert_twin_features(twin, size, quantize=quantize, channels=channels)


def test_resize_equals_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for h, w in [(32, 32), (17, 64), (299, 299), (512, 300)]:
        x = rng.uniform(0, 1, (1, h, w, 2)).astype(np.float32)
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
            align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(inception.resize_299(x)), expected, atol=1e-6)


def test_interpolation_matrix_by_hand():
    # 2 -> 4 pixels: source positions max((i + .5) / 2 - .5, 0) = 0, .25, .75, 1.25 -> 1.
    np.testing.assert_allclose(inception.interpolation_matrix(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    # 4 -> 2: positions 0.5 and 2.5, no antialias (two taps, not four).
    np.testing.assert_allclose(inception.interpolation_matrix(4, 2),
                               [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # Same size: the identity.
    np.testing.assert_array_equal(inception.interpolation_matrix(5, 5), np.eye(5))


def test_torch_pickle_reads_both_serialisations(tmp_path):
    torch = pytest.importorskip("torch")
    state = {
        "conv.weight": torch.randn(4, 3, 2, 2),
        "strided": torch.arange(12, dtype=torch.int64)[2:11:3],
        "transposed": torch.randn(3, 5).t(),
        "half": torch.randn(6).half(),
        "count": torch.tensor(7),
    }
    for zip_format in (True, False):
        path = tmp_path / f"state_{zip_format}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        loaded = torch_pickle.load_torch_state_dict(path)
        assert list(loaded) == list(state)
        for key, value in state.items():
            assert loaded[key].dtype == value.numpy().dtype, key
            np.testing.assert_array_equal(loaded[key], value.numpy())


def test_torch_pickle_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="getcwd"):
        torch_pickle.load_torch_state_dict(path)
    legacy = io.BytesIO()
    for obj in (torch_pickle.LEGACY_MAGIC_NUMBER, 1001, {}):
        pickle.dump(obj, legacy)
    legacy.write(pickle.dumps({"x": Evil()}, protocol=2))
    (tmp_path / "legacy.pth").write_bytes(legacy.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="getcwd"):
        torch_pickle.load_torch_state_dict(tmp_path / "legacy.pth")


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as e:
        inception.load_pytorch_fid_weights(tmp_path / "nope.pth")
    assert "\n" not in str(e.value) and inception.FID_WEIGHTS_URL in str(e.value)


def test_wrong_state_dict_is_refused():
    with pytest.raises(ValueError, match="not an FID Inception-V3 state dict"):
        inception.params_from_state_dict({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3))})


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jaxdiff import fid, inception
    assert jax.device_count() == 4, jax.devices()
    # He-normal kernels and random batch norms: features that differ between images.
    shapes = jax.eval_shape(inception.InceptionV3FID().init, jax.random.key(0),
                            np.zeros((1, 75, 75, 3)))["params"]
    rng = np.random.default_rng(0)
    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        low, high = (0.5, 1.5) if name in ("var", "scale") else (-0.2, 0.2)
        return rng.uniform(low, high, leaf.shape).astype(np.float32)
    params = jax.tree_util.tree_map_with_path(draw, shapes)
    images = np.random.default_rng(1).uniform(-1, 1, (5, 20, 20, 3)).astype(np.float32)
    one = fid.inception_features(params, images, batch_size=5)
    mesh = jax.make_mesh((2, 2), ("data", "fsdp"))
    # 5 images in batches of 4 (one per device): the second batch is padded.
    four = fid.inception_features(params, images, batch_size=4, mesh=mesh)
    assert np.abs(one[0] - one[1]).max() > 1e-3 * np.abs(one).max(), one[:, :4]
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())
    print("OK")
    """
)


@pytest.mark.slow
def test_features_on_a_4_device_mesh_equal_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


@pytest.mark.slow
def test_benchmark_section_times_both_sides():
    pytorch_fid_or_skip()
    from experiments.bench.fid_inception import TORCH_VARIANT, bench_fid_inception

    rows = bench_fid_inception(dict(fid_batch=2, image_size=32, repeats=1, warmup=0), {})
    assert [r["variant"] for r in rows] == ["jaxdiff inception_features (jit)", TORCH_VARIANT]
    ours, theirs = rows
    assert ours["vs_reference"] == pytest.approx(theirs["median_s"] / ours["median_s"])
    assert ours["images_per_s"] == pytest.approx(2 / ours["median_s"])
