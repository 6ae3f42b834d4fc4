"""Tests for jaxdiff.sources (TFDS, IDX, .npy, digits) and the grain pipeline in jaxdiff.data."""

import gzip
import json
import socket
import time
import urllib.request

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff import data, sources

# Label counts of the standard MNIST t10k split.
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FILES = [
    f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
]


def config(**fields):
    return ml_collections.ConfigDict(fields)


def index_source(n, *, size=4):
    """Record i is an image filled with the value i, labelled i: batches show their indices."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 1))
    return sources.ArraySource(np.ascontiguousarray(images), labels=np.arange(n, dtype=np.int32))


def normalized(pixels):
    """uint8 values as the pipeline maps them, in float32 arithmetic."""
    return np.asarray(pixels, np.float32) / 127.5 - 1.0


def labels_of(iterator, num_batches):
    return [next(iterator)["label"].tolist() for _ in range(num_batches)]


@pytest.fixture
def offline(monkeypatch):
    """No name resolves and no proxy is set: the machine looks offline, whatever it is."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(urllib.request, "getproxies", dict)


# --------------------------------------------------------------------------- TFDS


def test_tfds_source_records(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        source = sources.make_source(
            config(source="tfds", name="mnist", split="train", data_dir=str(tmp_path))
        )
        assert len(source) == 6
        record = source[2]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (28, 28, 1)
        assert isinstance(record["label"], int) and 0 <= record["label"] < 10
        batch = next(data.make_pipeline(source, batch_size=3, seed=0, pad_to=32))
    assert batch["image"].shape == (3, 32, 32, 1) and batch["label"].dtype == np.int32


def test_tfds_offline_fails_fast_with_the_offline_options(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(sources.DatasetUnavailableError) as info:
        sources.load_tfds("mnist", split="test", data_dir=str(tmp_path))
    assert time.monotonic() - start < 30  # TFDS's own retries take minutes.
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "could not be downloaded" in message
    for option in (
        "--config.data.manual_dir",
        "TFDS_DATA_DIR",
        "--config.data.data_dir",
        "--config.data.source=idx --config.data.path=../shared/data/mnist",
        "configs/digits.py",
    ):
        assert option in message


def test_tfds_offline_names_the_files_missing_from_manual_dir(tmp_path, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in MNIST_FILES[2:]:  # Only the t10k files, as in ../shared/data/mnist.
        (manual / name).write_bytes(b"x")
    with pytest.raises(sources.DatasetUnavailableError, match="lacks train-images-idx3-ubyte.gz"):
        sources.load_tfds("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_tfds_manual_files_with_wrong_checksums(tmp_path, offline):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in MNIST_FILES:
        (manual / name).write_bytes(b"not mnist")
    with pytest.raises(sources.DatasetUnavailableError, match="checksum"):
        sources.load_tfds("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))


def test_tfds_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a TFDS dataset"):
        sources.load_tfds("no_such_dataset_xyz", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- IDX


def test_idx_real_mnist_test_split(mnist_dir):
    source = sources.make_source(config(source="idx", path=str(mnist_dir), split="test"))
    assert len(source) == 10000
    assert source.images.shape == (10000, 28, 28, 1) and source.images.dtype == np.uint8
    counts = np.bincount(source.labels, minlength=10)
    assert counts.sum() == 10000 and counts.tolist() == MNIST_TEST_LABEL_COUNTS
    assert source[0]["label"] == 7
    assert source.images.max() == 255 and source.images.min() == 0


def test_idx_missing_split_names_the_files(mnist_dir):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        sources.load_idx(mnist_dir, split="train")


def write_idx(path, array, *, compress):
    header = np.array([0x0800 + array.ndim, *array.shape], ">u4").tobytes()
    (gzip.open if compress else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_tiny_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    source = sources.load_idx(tmp_path, split="train")
    np.testing.assert_array_equal(source.images[..., 0], images)
    assert [source[i]["label"] for i in range(5)] == labels.tolist()


def test_idx_rejects_a_non_idx_file(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 2), np.uint8), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), compress=False)
    with pytest.raises(ValueError, match="not a 3-d uint8 IDX file"):
        sources.load_idx(tmp_path, split="test")


# --------------------------------------------------------------------------- .npy, digits


def test_npy_pair_with_one_hot_contexts(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    contexts = np.eye(5)[[0, 1, 2, 3, 4, 0]]  # float64 one-hot, as the sprites labels.
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", contexts)
    source = sources.make_source(
        config(
            source="npy",
            images_path=str(tmp_path / "images.npy"),
            labels_path=str(tmp_path / "labels.npy"),
        )
    )
    record = source[1]
    assert set(record) == {"image", "context"}
    np.testing.assert_array_equal(record["image"], images[1])
    assert record["context"].dtype == np.float32 and record["context"].tolist() == [0, 1, 0, 0, 0]
    batch = next(data.make_pipeline(source, batch_size=4, seed=0))
    assert batch["context"].shape == (4, 5) and batch["context"].dtype == np.float32


def test_npy_int_labels_and_float_images(tmp_path):
    np.save(tmp_path / "images.npy", np.array([[[0.0, 1.0]], [[0.5, 0.2]]], np.float32))
    np.save(tmp_path / "labels.npy", np.array([7, 2]))
    source = sources.load_npy(tmp_path / "images.npy", tmp_path / "labels.npy")
    assert source[0]["image"].tolist() == [[[0], [255]]] and source[1]["label"] == 2
    assert source[1]["image"][0, :, 0].tolist() == [128, 51]  # round(0.5 * 255), round(51.0)


def test_npy_errors(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 2, 2, 1), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.int64))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        sources.load_npy(tmp_path / "images.npy", tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="4 images .* 3 labels"):
        sources.load_npy(tmp_path / "images.npy", tmp_path / "labels.npy")


def test_digits():
    from sklearn import datasets

    source = sources.make_source(config(source="digits", split="train"))
    assert len(source) == 1797
    assert source.images.shape == (1797, 8, 8, 1) and source.images.dtype == np.uint8
    assert source.images.max() == 255
    expected = np.round(datasets.load_digits().images[5] * 255 / 16)
    np.testing.assert_array_equal(source[5]["image"][..., 0], expected)


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'tfds', 'idx', 'npy', 'digits'"):
        sources.make_source(config(source="csv"))


# --------------------------------------------------------------------------- pipeline


def test_batches_and_normalisation():
    images = np.array([0, 255, 51, 204], np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 1))
    source = sources.ArraySource(images.astype(np.uint8), labels=np.arange(4))
    batch = next(data.make_pipeline(source, batch_size=4, seed=0, shuffle=False))
    assert batch["image"].shape == (4, 2, 3, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].tolist() == [0, 1, 2, 3]
    values = batch["image"][:, 0, 0, 0]
    assert values[0] == -1.0 and values[1] == 1.0  # Exactly: 0 -> -1 and 255 -> 1.
    np.testing.assert_allclose(values[2:], [-0.6, 0.6], rtol=1e-6)


def test_resize_and_pad():
    block = np.kron(np.array([[0, 40], [80, 120]], np.uint8), np.ones((2, 2), np.uint8))
    source = sources.ArraySource(block[None, :, :, None], labels=np.zeros(1))
    down = next(data.make_pipeline(source, batch_size=1, seed=0, image_size=2))["image"]
    # INTER_AREA averages each 2x2 block: the blocks are constant, so the result is exact.
    np.testing.assert_array_equal(down[0, :, :, 0], normalized([[0, 40], [80, 120]]))
    up = next(data.make_pipeline(source, batch_size=1, seed=0, image_size=(8, 6)))["image"]
    assert up.shape == (1, 8, 6, 1)
    # INTER_LINEAR: corners keep the corner values (the blocks are 2 px wide), the rest
    # interpolates between the four levels.
    np.testing.assert_allclose(up[0, ::7, ::5, 0], normalized([[0, 40], [80, 120]]), atol=1e-6)
    assert normalized(0) <= up.min() and up.max() <= normalized(120)
    assert len(np.unique(up)) > 4  # interpolated, not nearest-neighbour
    padded = next(data.make_pipeline(source, batch_size=1, seed=0, pad_to=8))["image"][0, :, :, 0]
    np.testing.assert_array_equal(padded[2:6, 2:6], normalized(block))
    assert (padded[:2] == -1).all() and (padded[6:] == -1).all() and (padded[:, :2] == -1).all()


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    source = index_source(12)
    first = labels_of(data.make_pipeline(source, batch_size=4, seed=0), 6)
    assert first == labels_of(data.make_pipeline(source, batch_size=4, seed=0), 6)
    assert first != labels_of(data.make_pipeline(source, batch_size=4, seed=1), 6)
    epoch_1, epoch_2 = sum(first[:3], []), sum(first[3:], [])
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(12)) and epoch_1 != epoch_2
    in_order = labels_of(data.make_pipeline(source, batch_size=4, seed=0, shuffle=False), 4)
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [0, 1, 2, 3]]


def test_num_epochs_and_drop_remainder():
    source = index_source(10)
    dropped = list(data.make_pipeline(source, batch_size=4, seed=0, num_epochs=1))
    assert [len(b["label"]) for b in dropped] == [4, 4]
    kept = list(
        data.make_pipeline(source, batch_size=4, seed=0, num_epochs=1, drop_remainder=False)
    )
    assert [len(b["label"]) for b in kept] == [4, 4, 2]
    assert sorted(sum((b["label"].tolist() for b in kept), [])) == list(range(10))


def test_process_shards_are_disjoint_and_make_up_the_global_batches():
    source = index_source(24)
    whole = labels_of(data.make_pipeline(source, batch_size=8, seed=3, num_epochs=1), 3)
    shards = [
        labels_of(
            data.make_pipeline(
                source, batch_size=8, seed=3, num_epochs=1, shard_index=i, shard_count=2
            ),
            3,
        )
        for i in range(2)
    ]
    assert all(len(batch) == 4 for shard in shards for batch in shard)
    seen = [sum(shard, []) for shard in shards]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))
    for k in range(3):  # The same seed gives the same global batches on 1 process or 2,
        # in the same order: process i holds rows [i b, (i + 1) b) of each global batch.
        assert shards[0][k] + shards[1][k] == whole[k]
    later = data.make_pipeline(source, batch_size=8, seed=3, num_epochs=1, start_batch=1,
                               shard_index=1, shard_count=2)
    assert labels_of(later, 2) == shards[1][1:]  # a resumed run starts at its step
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        data.make_pipeline(source, batch_size=7, seed=0, shard_index=0, shard_count=2)


def test_resume_from_iterator_state():
    source = index_source(10)
    iterator = data.make_pipeline(source, batch_size=4, seed=5, image_size=2)
    labels_of(iterator, 4)  # Past an epoch boundary.
    state = json.loads(json.dumps(iterator.get_state()))  # Checkpoints store it as JSON.
    expected = [next(iterator) for _ in range(3)]
    resumed = data.make_pipeline(source, batch_size=4, seed=5, image_size=2)
    resumed.set_state(state)
    for batch in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["label"], batch["label"])
        np.testing.assert_array_equal(got["image"], batch["image"])
