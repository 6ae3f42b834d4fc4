"""What a workdir holds: the config saved with its newest complete checkpoint, and that
checkpoint's params and EMA params."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import ml_collections

from experiments.runs import builders
from experiments.runtime import user_input
from jaxdiff import checkpoint, optim


def no_checkpoint(workdir) -> FileNotFoundError:
    return FileNotFoundError(
        f"no complete checkpoint in {checkpoint.checkpoint_dir(workdir)}; train first with "
        f"python -m experiments.train --config <config> --workdir {workdir}"
    )


def load_run_config(workdir) -> ml_collections.ConfigDict:
    """The config saved with the newest complete checkpoint in ``workdir``."""
    user_input.check_workdir(workdir)
    with contextlib.closing(checkpoint.make_manager(workdir, read_only=True)) as manager:
        if manager.latest_step() is None:
            raise no_checkpoint(workdir)
        return ml_collections.ConfigDict(checkpoint.saved_config(manager))


def restore_for_sampling(config: ml_collections.ConfigDict, workdir: str, model: nn.Module):
    """(params, ema_params, step) of the newest complete checkpoint in ``workdir``. Only
    those two are read: the optimizer's other state (Adam's two moments, twice the model)
    stays on disk."""
    optimizer = builders.build_optimizer(config)
    abstract = jax.eval_shape(
        lambda: builders.init_state(config, model, optimizer, jax.random.key(0))
    )
    read = (abstract.params, optim.ema_params(abstract.opt_state))
    wanted = {id(x) for x in jax.tree.leaves(read)}
    target = jax.tree.map(lambda x: x if id(x) in wanted else checkpoint.SKIP, abstract)
    with contextlib.closing(checkpoint.make_manager(workdir, read_only=True)) as manager:
        restored = checkpoint.restore(manager, state=target, config=config)
    if restored is None:
        raise no_checkpoint(workdir)
    state, step = restored
    return state.params, optim.ema_params(state.opt_state), step
