"""A data set encoded once through an autoencoder, kept on disk: the training data of latent
diffusion, so the train step never runs the encoder (Rombach et al. 2022, sec. 3: the
autoencoder is trained once and the diffusion model trains on its latents).

Layout of ``cache_dir``: ``scale.json`` ({"scaling_factor", "shift_factor"}, fixed before
the first shard), ``shard_{k:05d}.npz`` (``latents`` float32 (n, h, w, c), scaled;
``labels`` int32 (n,) when the data set has labels) for records [k n, (k + 1) n), and
``meta.json`` once every shard is there. Each file is written to a temporary name and
renamed, so a run killed mid-way leaves whole shards only, and a rerun encodes the missing
ones (``build_latent_cache`` is resumable). The stored latent is the posterior mean,
``scale_latents(mean)``: with ``scaling_factor="auto"`` it is 1 / std of the first shard's
means (LDM appendix D.1), which gives the diffusion model unit-variance data.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxdiff.models.autoencoder import scale_latents

META = "meta.json"
SCALE = "scale.json"


def _write_atomic(path: pathlib.Path, write: Callable[[Any], None], *, binary: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb" if binary else "w") as f:
        write(f)
    os.replace(tmp, path)


def shard_path(cache_dir: pathlib.Path, k: int) -> pathlib.Path:
    return cache_dir / f"shard_{k:05d}.npz"


def build_latent_cache(
    encode: Callable[[np.ndarray], np.ndarray],
    records: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]],
    *,
    num_records: int,
    cache_dir: str | pathlib.Path,
    shard_size: int,
    scaling_factor: float | str,
    shift_factor: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Encodes records [0, num_records) into ``cache_dir`` and returns its ``meta``.

    ``records(start, stop) -> (images float32 (n, H, W, C) in [-1, 1], labels (n,) or
    None)``; ``encode(images) -> posterior means (n, h, w, c)`` (jit it, with the batch
    sharded over the devices). ``scaling_factor``: a number (the autoencoder's) or "auto".
    Shards already on disk are kept, so a killed run resumes where it stopped.
    ``progress(n)`` is called after each shard with the records it encoded.
    """
    cache = pathlib.Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    num_shards = -(-int(num_records) // int(shard_size))
    if (cache / SCALE).exists():
        scale = json.loads((cache / SCALE).read_text())
    else:
        if scaling_factor == "auto":
            first, _ = records(0, min(shard_size, num_records))
            scaling_factor = 1.0 / float(np.std(np.asarray(encode(first)) - (shift_factor or 0)))
        scale = {"scaling_factor": float(scaling_factor), "shift_factor": shift_factor}
        _write_atomic(cache / SCALE, lambda f: json.dump(scale, f), binary=False)
    for k in range(num_shards):
        start, stop = k * shard_size, min((k + 1) * shard_size, num_records)
        if shard_path(cache, k).exists():
            continue
        images, labels = records(start, stop)
        z = scale_latents(np.asarray(encode(images), np.float32), **scale)
        arrays = {"latents": np.asarray(z, np.float32)}
        if labels is not None:
            arrays["labels"] = np.asarray(labels, np.int32)
        _write_atomic(shard_path(cache, k), lambda f, a=arrays: np.savez(f, **a), binary=True)
        if progress is not None:
            progress(stop - start)
    with np.load(shard_path(cache, 0)) as first:
        latent_shape = list(first["latents"].shape[1:])
    meta = {"num_records": int(num_records), "num_shards": num_shards,
            "shard_size": int(shard_size), "latent_shape": latent_shape, **scale}
    _write_atomic(cache / META, lambda f: json.dump(meta, f, indent=2), binary=False)
    return meta


def read_meta(cache_dir: str | pathlib.Path) -> dict[str, Any]:
    """A complete cache's ``meta.json`` (num_records, latent_shape, scaling_factor,
    shift_factor, ...); FileNotFoundError when the cache is incomplete."""
    cache = pathlib.Path(cache_dir)
    if not (cache / META).exists():
        raise FileNotFoundError(f"{cache} holds no complete latent cache ({META} missing); "
                                "build it with build_latent_cache")
    return json.loads((cache / META).read_text())


def load_latent_cache(cache_dir: str | pathlib.Path) -> dict[str, Any]:
    """{'latents': float32 (N, h, w, c), 'labels': int32 (N,) or None, plus the meta}; a
    FileNotFoundError when the cache is incomplete."""
    cache = pathlib.Path(cache_dir)
    meta = read_meta(cache)
    shards = [np.load(shard_path(cache, k)) for k in range(meta["num_shards"])]
    labels = None
    if "labels" in shards[0]:
        labels = np.concatenate([s["labels"] for s in shards])
    return {**meta, "latents": np.concatenate([s["latents"] for s in shards]), "labels": labels}
