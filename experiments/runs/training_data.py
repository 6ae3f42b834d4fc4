"""The training batches a config's ``data`` section describes."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from experiments.runtime.errors import ConfigError
from jaxdiff import data, sources


def build_data(config: ml_collections.ConfigDict, *, start_batch: int = 0,
               shuffle: bool = True) -> Any:
    """The checkpointable grain iterator of training batches described by ``config.data``.

    Images are resized to ``data.resize_to`` and zero-padded to ``data.image_size`` when
    ``resize_to`` is set (digits: 8 -> 12 -> 16, a black border like MNIST's), else resized
    to ``data.image_size``. The first batch is global batch ``start_batch`` (a resumed run's
    step). ``shuffle=False`` keeps the data set's order (held-out previews).
    """
    d = config.data
    source = sources.make_source(d)
    sources.check_labels(source, num_classes=config.model.get("num_classes"))
    channels = np.asarray(source[0]["image"]).shape[-1] if np.ndim(source[0]["image"]) == 3 else 1
    if channels != int(d.channels):
        raise ConfigError(
            f"data.channels={d.channels} but the {d.source} data have {channels} channels; "
            f"set --config.data.channels={channels}"
        )
    resize_to = d.get("resize_to")
    return data.make_pipeline(
        source,
        batch_size=int(d.batch_size),
        seed=int(config.train.seed),
        image_size=int(resize_to or d.image_size),
        pad_to=int(d.image_size) if resize_to else None,
        worker_count=int(d.get("worker_count", 0)),
        start_batch=start_batch,
        shuffle=shuffle,
    )
