"""A training batch and what a loss reads from it: the image and the model's condition.

A batch is a dict ``{'image': (B, H, W, C) float32 in [-1, 1]}`` plus optionally
``'label'`` (B,) int32, ``'context'`` (B, D) float32 and ``'hint'`` (B, H, W, C') float32.
Every loss (``jaxdiff.losses``, ``jaxdiff.flow_matching``, ``jaxdiff.edm``) reads it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff import conditioning

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Metrics]]
ApplyFn = Callable[..., jax.Array]

COND_KEYS = ("label", "context", "hint")


def batch_cond(batch: Batch) -> conditioning.Cond:
    """The model's condition from a batch dict.

    Returns None (no 'label', 'context' or 'hint'), the bare 'label' (B,) or 'context'
    (B, D) array when it is the only one, else a dict of the entries present. A 'hint' always
    comes in a dict, since a bare float array would read as a context.
    """
    present = {k: batch[k] for k in COND_KEYS if k in batch}
    if not present:
        return None
    if len(present) == 1 and "hint" not in present:
        return next(iter(present.values()))
    return present


def batch_image(batch: Batch) -> jax.Array:
    """The batch's 'image' entry as float32 (B, H, W, C); a clear error without one."""
    if "image" not in batch:
        raise ValueError(
            f"a batch must be a dict with an 'image' entry (B, H, W, C); got keys {sorted(batch)}"
        )
    return jnp.asarray(batch["image"], jnp.float32)


def model_cond(batch: Batch, *, num_classes: int | None) -> conditioning.Cond:
    """``batch_cond`` without the 'label' entry when the model takes no labels."""
    if num_classes is None:
        batch = {k: v for k, v in batch.items() if k != "label"}
    return batch_cond(batch)
