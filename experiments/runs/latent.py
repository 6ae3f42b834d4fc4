"""Latent diffusion runs (configs/mnist_latent_dit.py): a diffusion model trained on the
latents of an autoencoder run (configs/mnist_vae.py), decoded for grids, GIFs and evaluate.

A config with ``latent.autoencoder_workdir`` is such a run (``kinds``). Before the first
step the run's data set (``config.data``, the images) is encoded once through the
autoencoder's EMA params into ``latent.cache_dir`` (``jaxdiff.latent_cache``: posterior
means times the scale factor, the batch sharded over the devices, resumable after a kill),
and the model trains on those latents: the train step never runs the encoder. The model's
input shape is the latents' (``latent.size``, ``latent.channels``, filled in by
``resolve``); samples are decoded (``decoder``) before anything looks at them, so previews,
``experiments.sample`` and ``experiments.evaluate`` see images.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from experiments.runs import autoencoder, restore
from experiments.runtime.errors import ConfigError
from jaxdiff import data, latent, latent_cache, sources
from jaxdiff import train as jd_train
from jaxdiff.models.autoencoder import AutoencoderKL


def is_latent(config: ml_collections.ConfigDict) -> bool:
    return bool(config.get("latent", {}).get("autoencoder_workdir"))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``latent.size`` / ``latent.channels`` (the autoencoder's latents of
    ``data.image_size`` images) and a default ``latent.cache_dir`` filled in."""
    workdir = pathlib.Path(config.latent.autoencoder_workdir)
    ae = restore.load_run_config(workdir)
    if int(ae.data.image_size) != int(config.data.image_size):
        raise ConfigError(
            f"data.image_size={config.data.image_size} but the autoencoder in {workdir} was "
            f"trained on {ae.data.image_size}x{ae.data.image_size} images")
    f = 2 ** (len(ae.model.block_out_channels) - 1)
    config = ml_collections.ConfigDict(config.to_dict())
    with config.unlocked():
        config.latent.size = int(config.data.image_size) // f
        config.latent.channels = int(ae.model.latent_channels)
        if not config.latent.get("cache_dir"):
            d = config.data
            config.latent.cache_dir = str(
                workdir / f"latents_{d.source}_{d.get('name')}_{d.get('split')}_{d.image_size}")
    return config


def load_autoencoder(config: ml_collections.ConfigDict) -> tuple[AutoencoderKL, Any]:
    """The autoencoder of ``latent.autoencoder_workdir`` and its EMA params."""
    workdir = str(config.latent.autoencoder_workdir)
    ae_config = restore.load_run_config(workdir)
    model = autoencoder.build_model(ae_config)
    _, ema, _ = restore.restore_for_sampling(ae_config, workdir, model)
    return model, ema


def image_records(config: ml_collections.ConfigDict) -> tuple[Any, Callable]:
    """(source, records(start, stop) -> (images in [-1, 1], labels or None)): the run's
    images, resized and padded as training would."""
    d = config.data
    source = sources.make_source(d)
    resize_to = d.get("resize_to")
    size = (int(resize_to or d.image_size),) * 2
    pad = (int(d.image_size),) * 2 if resize_to else None

    def records(start: int, stop: int):
        recs = [data.prepare_record(source[i], image_size=size, pad_to=pad)
                for i in range(start, stop)]
        images = np.stack([r["image"] for r in recs]).astype(np.float32) / 127.5 - 1.0
        labels = np.array([r["label"] for r in recs]) if "label" in recs[0] else None
        return images, labels

    return source, records


def build_cache(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Encodes the run's data set into ``latent.cache_dir`` (the shards not there yet) and
    returns the loaded cache (``latent_cache.load_latent_cache``)."""
    cache_dir = pathlib.Path(config.latent.cache_dir)
    if (cache_dir / latent_cache.META).exists():
        return latent_cache.load_latent_cache(cache_dir)
    vae, params = load_autoencoder(config)
    source, records = image_records(config)
    shard = int(config.latent.get("shard_size", 512))
    mesh = jd_train.make_mesh()
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
    mean = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode")[0])

    def encode(images: np.ndarray) -> np.ndarray:
        n = len(images)
        pad = (-n) % mesh.size  # whole rows per device; the padding is cut off again
        x = np.concatenate([images, images[:pad]]) if pad else images
        return np.asarray(mean(params, jax.device_put(x, sharding)))[:n]

    scaling = config.latent.get("scaling_factor", "auto")
    with tqdm.tqdm(total=len(source), desc="encode latents", unit="image",
                   dynamic_ncols=True) as bar:
        latent_cache.build_latent_cache(
            encode, records, num_records=len(source), cache_dir=cache_dir, shard_size=shard,
            scaling_factor=vae.scaling_factor if scaling == "autoencoder" else scaling,
            shift_factor=vae.shift_factor, progress=bar.update)
    return latent_cache.load_latent_cache(cache_dir)


def build_data(config: ml_collections.ConfigDict, *, start_batch: int = 0) -> Any:
    """The training batches: the cached latents (float32 'image') and their labels."""
    cache = build_cache(config)
    return data.make_pipeline(
        sources.ArraySource(cache["latents"], cache["labels"],
                            origin=str(config.latent.cache_dir)),
        batch_size=int(config.data.batch_size), seed=int(config.train.seed),
        start_batch=start_batch, worker_count=int(config.data.get("worker_count", 0)),
    )


def decoder(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array] | None:
    """``decode(latents) -> images in [-1, 1]`` for a latent run (the cache's scale factor
    undone, then the autoencoder's decoder), None for any other run."""
    if not is_latent(config):
        return None
    vae, params = load_autoencoder(config)
    meta = latent_cache.read_meta(config.latent.cache_dir)
    scaled = vae.clone(scaling_factor=meta["scaling_factor"], shift_factor=meta["shift_factor"])
    return lambda z: latent.decode(scaled, params, jnp.asarray(z))
