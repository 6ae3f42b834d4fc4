"""Tests for jaxdiff.latent_cache: a data set encoded once through an autoencoder equals
encoding it on the fly, with the scale factor applied, and a build killed mid-way resumes
without redoing (or corrupting) the shards it wrote."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import latent_cache
from jaxdiff.models.autoencoder import AutoencoderKL

MODEL = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(4, 4),
                      latent_channels=2, norm_num_groups=2, scaling_factor=0.7,
                      shift_factor=0.1)


@pytest.fixture(scope="module")
def setup():
    images = np.random.default_rng(0).uniform(-1, 1, size=(21, 8, 8, 1)).astype(np.float32)
    labels = np.arange(21) % 10
    params = jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    encode = jax.jit(lambda x: MODEL.apply({"params": params}, x, method="encode")[0])
    return images, labels, encode


def _build(tmp_path, setup, *, calls, scaling_factor=0.7, fail_at=None):
    images, labels, encode = setup

    def records(start, stop):
        if fail_at is not None and start >= fail_at:
            raise KeyboardInterrupt("killed")
        calls.append(start)
        return images[start:stop], labels[start:stop]

    return latent_cache.build_latent_cache(
        encode, records, num_records=len(images), cache_dir=tmp_path, shard_size=8,
        scaling_factor=scaling_factor, shift_factor=0.1)


def test_cache_equals_encoding_on_the_fly(tmp_path, setup):
    images, labels, encode = setup
    meta = _build(tmp_path, setup, calls=[])
    got = latent_cache.load_latent_cache(tmp_path)
    want = (np.asarray(encode(images)) - 0.1) * 0.7
    assert meta["num_shards"] == 3 and meta["latent_shape"] == [4, 4, 2]
    np.testing.assert_allclose(got["latents"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["labels"], labels)


def test_auto_scale_gives_unit_std_on_the_first_shard(tmp_path, setup):
    images, _, encode = setup
    meta = _build(tmp_path, setup, calls=[], scaling_factor="auto")
    first = np.asarray(encode(images[:8])) - 0.1
    np.testing.assert_allclose(meta["scaling_factor"], 1 / first.std(), rtol=1e-5)
    got = latent_cache.load_latent_cache(tmp_path)["latents"][:8]
    np.testing.assert_allclose(got.std(), 1.0, rtol=1e-4)


def test_a_killed_build_resumes(tmp_path, setup):
    """Killed before the third shard, with a half-written file left behind: the cache is
    incomplete, the rerun encodes only the missing shard and ends equal to a clean build."""
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, setup, calls=calls, fail_at=16)
    assert calls == [0, 8]
    (tmp_path / "shard_00002.npz.tmp").write_bytes(b"half a shard")
    with pytest.raises(FileNotFoundError, match="meta.json"):
        latent_cache.load_latent_cache(tmp_path)
    calls.clear()
    _build(tmp_path, setup, calls=calls)
    assert calls == [16]
    clean = tmp_path / "clean"
    _build(clean, setup, calls=[])
    np.testing.assert_array_equal(latent_cache.load_latent_cache(tmp_path)["latents"],
                                  latent_cache.load_latent_cache(clean)["latents"])
    assert json.loads((tmp_path / "meta.json").read_text())["num_records"] == 21
