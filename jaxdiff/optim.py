"""The optimizer: an optax chain whose state also carries an EMA of the parameters.

    clip_by_global_norm(grad_clip)
    -> adamw(learning rate with linear warmup and optional cosine decay, weight_decay)
    -> ema_of_params(ema_decay, start_step=ema_start_step)      (always the last element)

Keeping the EMA in the optimizer state means one ``opt_state`` holds everything a checkpoint
needs, the EMA is updated inside the jitted train step with no extra code, and
``ema_params(opt_state)`` reads it back for sampling.

Non-finite losses/gradients are not filtered here: ``jaxdiff.train.make_train_step`` keeps
params and opt_state unchanged on such a step and counts it in its metrics (``skipped``),
which also keeps the step counter and the EMA in sync with the data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaParamsState(NamedTuple):
    """State of ``ema_of_params``: ``count`` (int32, updates seen) and ``ema`` (params-shaped)."""

    count: jax.Array
    ema: Any


def ema_of_params(decay: float, *, start_step: int = 0) -> optax.GradientTransformation:
    """Keeps an exponential moving average of the parameters in the optimizer state.

    On update k (``count`` = k updates before it), with new_params = params + updates:

        ema = new_params                                  while count < start_step
        ema = decay * ema + (1 - decay) * new_params      afterwards

    Starting the average only after some training keeps the random initialisation out of it
    (the seeds' "EMA only after some training", after Karras et al.'s EDM2 post-hoc EMA
    discussion, NVIDIA blog "Rethinking how to train diffusion models"). The updates pass
    through unchanged, so this must be the LAST element of a chain (it needs the final
    updates to know the new params), and ``update`` must be called with ``params``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"ema decay must be in [0, 1], got {decay}")
    if start_step < 0:
        raise ValueError(f"ema start_step must be >= 0, got {start_step}")

    def init_fn(params: Any) -> EmaParamsState:
        # A copy, not the same buffers: the train step donates its state, and XLA refuses to
        # donate one buffer twice (params and ema).
        ema = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return EmaParamsState(count=jnp.zeros([], jnp.int32), ema=ema)

    def update_fn(updates: Any, state: EmaParamsState, params: Any = None):
        if params is None:
            raise ValueError("ema_of_params needs the params: call optimizer.update(grads, "
                             "opt_state, params)")
        new_params = optax.apply_updates(params, updates)
        before_start = state.count < start_step

        def average(ema, new):
            mixed = decay * ema + (1.0 - decay) * new
            return jnp.where(before_start, new, mixed).astype(ema.dtype)

        ema = jax.tree.map(average, state.ema, new_params)
        return updates, EmaParamsState(count=optax.safe_increment(state.count), ema=ema)

    return optax.GradientTransformation(init_fn, update_fn)


def ema_params(opt_state: Any) -> Any:
    """The EMA params held by the ``ema_of_params`` state inside ``opt_state``.

    Found by the state's type name (``optax.tree_utils.tree_get``), so it works however the
    chain is nested; raises ValueError when there is none and KeyError when there are two.
    """
    state = optax.tree_utils.tree_get(opt_state, "EmaParamsState")
    if state is None:
        raise ValueError("opt_state has no EMA of params; build the optimizer with "
                         "jaxdiff.optim.make_optimizer or add ema_of_params to the chain")
    return state.ema


def make_lr_schedule(
    *, learning_rate: float, warmup_steps: int = 0, decay_steps: int | None = None
) -> optax.Schedule:
    """Learning rate per update index k = 0, 1, ...: linear warmup from 0 to
    ``learning_rate`` over ``warmup_steps`` (lr_k = learning_rate * k / warmup_steps, so
    the first update has lr 0), then constant, or, with ``decay_steps``, a cosine decay to 0
    reached at k = decay_steps (optax's convention: decay_steps counts the warmup too;
    Loshchilov & Hutter 2017, SGDR eq. 5 without restarts).
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if decay_steps is not None:
        if decay_steps <= warmup_steps:
            raise ValueError(
                f"decay_steps counts the warmup and must exceed warmup_steps, got "
                f"decay_steps={decay_steps}, warmup_steps={warmup_steps}"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
            decay_steps=decay_steps, end_value=0.0,
        )
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)


def make_optimizer(
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    ema_decay: float = 0.999,
    ema_start_step: int = 0,
) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW (Loshchilov & Hutter 2019) on ``make_lr_schedule`` ->
    ``ema_of_params``. ``grad_clip`` None or 0 turns clipping off.

    AdamW is wrapped in ``optax.inject_hyperparams`` so its state holds the learning rate
    of the last update (read with ``optax.tree_utils.tree_get(opt_state, 'learning_rate')``;
    the train step reports it). Weight decay applies to every parameter.
    """
    schedule = make_lr_schedule(
        learning_rate=learning_rate, warmup_steps=warmup_steps, decay_steps=decay_steps
    )
    chain = []
    if grad_clip:
        chain.append(optax.clip_by_global_norm(grad_clip))
    chain.append(
        optax.inject_hyperparams(optax.adamw)(
            learning_rate=schedule, b1=b1, b2=b2, weight_decay=weight_decay
        )
    )
    chain.append(ema_of_params(ema_decay, start_step=ema_start_step))
    return optax.chain(*chain)
