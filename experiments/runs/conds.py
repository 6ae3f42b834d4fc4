"""The conditions to sample with: class labels as the model takes them (int labels, one-hot
contexts, or nothing for an unconditional model), for preview grids, the sampling CLI's
``--labels`` / ``--context`` and the evaluation's target labels."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from experiments.runs.builders import cond_spec
from experiments.runs.sampler_assembly import grid_columns
from experiments.runtime.errors import ConfigError


def label_conds(model: nn.Module, labels: Any) -> Any:
    """The model's cond for class labels (N,): the int labels for a model with num_classes
    (ContextUnet one-hot encodes them: the sprites' 5 categories), one-hot float contexts
    (N, D) for a model with only a context, None for an unconditional model."""
    num_classes, context_dim = cond_spec(model)
    if num_classes:
        return jnp.asarray(labels, jnp.int32)
    if context_dim:
        return jnp.eye(context_dim, dtype=jnp.float32)[jnp.asarray(labels)]
    return None


def grid_conds(model: nn.Module, *, per_row: int) -> tuple[Any, int]:
    """(cond, num_rows) for a grid with one row of ``per_row`` images per class / one-hot
    context; (None, 0) for an unconditional model."""
    num_classes, context_dim = cond_spec(model)
    rows = num_classes or context_dim or 0
    if not rows:
        return None, 0
    return label_conds(model, jnp.repeat(jnp.arange(rows, dtype=jnp.int32), per_row)), rows


def requested_conds(
    model: nn.Module, *, labels: str, context: str, num: int, guide_classes: int | None = None
) -> tuple[Any, int]:
    """(cond, ncol) for experiments.sample's ``--labels`` / ``--context``: ``num`` images per
    label / context row; ncol=num keeps one per row. ``guide_classes``: a guiding
    classifier's classes, the labels of an unconditional model."""
    num_classes, context_dim = cond_spec(model)
    if guide_classes and not num_classes and not context_dim:
        num_classes = guide_classes
        if labels == "all":
            labels = ",".join(map(str, range(guide_classes)))
    if context != "all" and context_dim:
        vector = parse_floats(context, "--context")
        if len(vector) != context_dim:
            raise ConfigError(f"--context has {len(vector)} values; the model takes {context_dim}")
        return jnp.tile(jnp.asarray(vector, jnp.float32), (num, 1)), num
    if labels != "all" and not num_classes:
        raise ConfigError(
            "--labels needs a class-conditional model (num_classes) or --classifier_workdir"
        )
    if context != "all" and not context_dim:
        raise ConfigError("--context needs a model with a context input")
    if labels == "all" or not num_classes:
        cond, rows = grid_conds(model, per_row=num)
        return cond, (num if rows else grid_columns(num, 0))
    try:
        chosen = [int(x) for x in labels.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--labels must be a comma list of integers or 'all', got {labels!r}"
        ) from None
    if guide_classes:
        num_classes = min(num_classes, guide_classes)
    bad = [x for x in chosen if not 0 <= x < num_classes]
    if bad:
        raise ConfigError(f"--labels {bad} are not in [0, {num_classes})")
    return jnp.repeat(jnp.asarray(chosen, jnp.int32), num), num


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag} must be a comma list of numbers or 'all', got {text!r}"
        ) from None
