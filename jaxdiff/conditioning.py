"""Conditioning values and their "null" counterparts, shared by losses and guidance.

A condition is one of (DESIGN.md, Contracts):

* an int label array of shape (B,), whose null value is the extra label ``num_classes``
  (the model's label embedding has ``num_classes + 1`` rows);
* a float context array of shape (B, D), whose null value is all zeros (the sprites seed
  masks the context vector to zeros for the unconditional case);
* a dict of those; the ControlNet ``hint`` entry is never nulled here, because the hint is
  an input image rather than a label to guide on;
* ``None`` (an unconditional model).

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", alg. 1)
trains one network on both: each example's condition is replaced by the null condition with
probability ``cond_drop_prob`` (0.1 in the seeds).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Cond = Any  # None | jax.Array | dict[str, jax.Array]

NEVER_NULLED = ("hint",)


def null_cond(cond: Cond, *, num_classes: int | None = None) -> Cond:
    """The null condition with the structure and shape of ``cond``."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {
            k: v if k in NEVER_NULLED else null_cond(v, num_classes=num_classes)
            for k, v in cond.items()
        }
    cond = jnp.asarray(cond)
    if jnp.issubdtype(cond.dtype, jnp.integer):
        if num_classes is None:
            raise ValueError(
                "an integer label condition needs num_classes to form the null label "
                "(null label = num_classes)"
            )
        return jnp.full_like(cond, num_classes)
    return jnp.zeros_like(cond)


def drop_cond(
    key: jax.Array, cond: Cond, *, prob: float, num_classes: int | None = None
) -> Cond:
    """Replaces each example's condition by the null condition with probability ``prob``.

    One Bernoulli draw per example (not per entry), shared by every entry of a dict, so a
    dropped example is fully unconditional (CFG paper, alg. 1, line 3).
    """
    if cond is None or prob <= 0.0:
        return cond
    batch = _batch_size(cond)
    drop = jax.random.bernoulli(key, prob, (batch,))
    return where_cond(drop, null_cond(cond, num_classes=num_classes), cond)


def where_cond(mask: jax.Array, if_true: Cond, if_false: Cond) -> Cond:
    """Per-example select between two conditions of the same structure; mask is (B,) bool."""

    def select(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree.map(select, if_true, if_false)


def concat_cond(a: Cond, b: Cond) -> Cond:
    """Concatenates two conditions along the batch axis (for one batched CFG call)."""
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def _batch_size(cond: Cond) -> int:
    return jax.tree.leaves(cond)[0].shape[0]
