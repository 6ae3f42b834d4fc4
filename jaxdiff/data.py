"""One grain pipeline that turns a source (``jaxdiff.sources``) into training batches.

``make_pipeline(source, ...)`` shuffles, repeats, shards across processes, resizes or pads and
batches records ``{'image': uint8 (H, W, C), 'label' | 'context'}`` with grain into the batch
format every loss consumes (``{'image': float32 (B, H, W, C) in [-1, 1], 'label': int32 (B,)
| 'context': float32 (B, D)}``). Its iterator's position is checkpointable, so a resumed run
sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import grain
import jax
import numpy as np
from absl import flags


def make_pipeline(
    source: Any,
    *,
    batch_size: int,
    seed: int,
    image_size: int | tuple[int, int] | None = None,
    pad_to: int | tuple[int, int] | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    start_batch: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's share of each global batch.

    The records form one global stream: ``shuffle`` permutes them with ``seed`` (reshuffled
    each epoch), ``num_epochs`` repeats them (None: forever; batches run across epoch
    boundaries) and global batch k is records [k B, (k + 1) B) of the stream. Process
    ``shard_index`` of ``shard_count`` takes the contiguous slice [k B + i b, k B + (i + 1) b)
    of it (b = B / shard_count), so the processes' k-th batches, concatenated in process
    order, are the k-th global batch whatever the number of processes: same seed, same run on
    1 host or N (``jax.make_array_from_process_local_data`` puts process i's rows there).

    Args:
      source: records ``{'image': uint8 (H, W, C), 'label' | 'context': ...}`` (see above).
      batch_size: the global batch size; each process yields ``batch_size // shard_count``.
      image_size: resize to this (size or (height, width)) with cv2: INTER_AREA to shrink
        (averages pixels, no aliasing), INTER_LINEAR to grow.
      pad_to: then zero-pad (black, -1 after normalising) to this size, centred; e.g. 28 -> 32.
      drop_remainder: drop a last partial batch (only happens when ``num_epochs`` is set;
        with several processes the last partial global batch is always dropped).
      start_batch: the index of the first global batch to yield: a resumed run starts at its
        step, whatever the number of processes that wrote the checkpoint.
      shard_index, shard_count: this process's shard [jax.process_index(), jax.process_count()].
      worker_count: grain worker processes preparing batches (0: in this process).
      prefetch: batches prepared ahead in background threads (0: none).

    Returns:
      A grain ``DatasetIterator`` of ``{'image': float32 (b, H, W, C) in [-1, 1], 'label':
      int32 (b,) and/or 'context': float32 (b, D)}``. ``get_state()`` / ``set_state(state)``
      save and restore its position (a JSON-able dict); in an orbax checkpoint use
      ``grain.checkpoint.CheckpointSave(iterator)`` / ``CheckpointRestore(iterator)`` with
      ``grain.checkpoint.CheckpointHandler()`` (see jaxdiff/checkpoint.py).
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if batch_size % shard_count:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the number of processes "
            f"{shard_count}: each process loads batch_size // processes records per batch."
        )
    if len(source) == 0:
        raise ValueError("the data source is empty")
    ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map(functools.partial(prepare_record, image_size=_hw(image_size), pad_to=_hw(pad_to)))
    local_batch = batch_size // shard_count
    ds = ds.batch(local_batch, drop_remainder=drop_remainder or shard_count > 1)
    # Local batch j holds records [j b, (j + 1) b): global batch k is local batches
    # k P .. k P + P - 1, and process i takes local batch k P + i. Equal lengths for every
    # process (a process with one batch more would hang the others in the next collective).
    stop = len(ds) - len(ds) % shard_count
    ds = ds[start_batch * shard_count + shard_index : stop : shard_count]
    ds = ds.map(_normalize)
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
    )
    if worker_count > 0:
        # grain's workers read absl flags; outside an absl app (notebooks, tests) nothing
        # parsed them, so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(iter_ds)


def _hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def prepare_record(
    record: dict[str, Any],
    *,
    image_size: tuple[int, int] | None,
    pad_to: tuple[int, int] | None,
) -> dict[str, Any]:
    """One record, resized/padded; uint8 stays uint8 so batches are stacked before the cast.

    ``image_size`` and ``pad_to`` are (H, W) or None. Returns a dict with 'image' (H, W, C)
    uint8 and whichever of 'label', 'context' and 'hint' the record has.
    """
    if np.issubdtype(np.asarray(record["image"]).dtype, np.floating):
        # Float records (an autoencoder's latents, jaxdiff.latent_cache) are the model's
        # input as they are: no resizing, no [0, 255] scaling.
        return {**record, "image": np.asarray(record["image"], np.float32)}
    image = np.asarray(record["image"], np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image_size is not None and image.shape[:2] != image_size:
        shrink = image_size[0] <= image.shape[0] and image_size[1] <= image.shape[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized = cv2.resize(image, image_size[::-1], interpolation=interpolation)
        image = resized.reshape(*image_size, image.shape[-1])  # cv2 drops a channel axis of 1.
    if pad_to is not None:
        extra_h, extra_w = pad_to[0] - image.shape[0], pad_to[1] - image.shape[1]
        if extra_h < 0 or extra_w < 0:
            raise ValueError(f"pad_to {pad_to} is smaller than the image {image.shape[:2]}")
        top, left = extra_h // 2, extra_w // 2
        image = np.pad(image, ((top, extra_h - top), (left, extra_w - left), (0, 0)))
    out: dict[str, Any] = {"image": image}
    if "label" in record:
        out["label"] = np.int32(record["label"])
    if "context" in record:
        out["context"] = np.asarray(record["context"], np.float32)
    if "hint" in record:  # a ControlNet hint map (H, W, C) in [0, 1], made at the final size
        out["hint"] = np.asarray(record["hint"], np.float32)
    return out


def _normalize(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 [0, 255] -> float32 [-1, 1] (0 -> -1 and 255 -> 1 exactly), as DDPM sec. 3.3."""
    if batch["image"].dtype != np.uint8:  # float latents pass through
        return batch
    return {**batch, "image": batch["image"].astype(np.float32) / 127.5 - 1.0}
