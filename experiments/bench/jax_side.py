"""experiments.benchmark's jax side: compiled variants, the real train step, one-step samplers.

Nothing here imports torch. ``jax_variants`` compiles one program with jaxdiff's own XLA
options (``jaxdiff.xla_options``) and, where those differ from XLA's defaults, with the
defaults too, so an option's effect is measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import samplers, schedules
from jaxdiff import xla_options as jaxdiff_xla_options
from jaxdiff.losses import make_denoising_loss
from jaxdiff.optim import make_optimizer
from jaxdiff.train import create_train_state, make_mesh, make_train_step, shard_batch

NUM_TIMESTEPS = 1000
LEARNING_RATE, GRAD_CLIP, EMA_DECAY = 1e-4, 1.0, 0.999


def jax_variants(
    make_jitted: Callable[[dict | None], Any], args: tuple, *, xla_options: dict,
    xla_defaults: bool = True,
) -> dict[str, Any]:
    """Compiled executables of one program, from ``make_jitted(compiler_options)`` (None:
    jaxdiff's own, ``jaxdiff.xla_options``): 'jaxdiff'; 'jaxdiff, XLA default options' when
    jaxdiff sets any on this backend (and ``xla_defaults``), so their effect is measured in
    the same run; and 'jaxdiff + xla_options' with ``--xla_options`` added."""
    compiled = {"jaxdiff": make_jitted(None).lower(*args).compile()}
    own = jaxdiff_xla_options.compiler_options()
    if own and xla_defaults:
        compiled["jaxdiff, XLA default options"] = make_jitted({}).lower(*args).compile()
    if xla_options:
        compiled["jaxdiff + xla_options"] = make_jitted({**own, **xla_options}).lower(
            *args).compile()
    return compiled


def jit_with(fn: Callable) -> Callable[[dict | None], Any]:
    """``options -> jax.jit(fn)`` compiled with ``options`` (None: jaxdiff's own)."""
    def make(options):
        return jaxdiff_xla_options.jit(fn, compiler_options=options)

    return make


def ddim_step_fn(apply_fn: Callable, schedule: schedules.Schedule) -> Callable:
    """Jitted (params, x, t, t_prev) -> x_prev: one deterministic DDIM step (Song et al. 2021,
    eq. 12, eta = 0, x0 clipped), as ``jaxdiff.samplers.ddim`` computes it inside its scan."""

    @jaxdiff_xla_options.jit
    def step(params, x, t, t_prev):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = schedules.to_x0_eps(
            schedule, x, t_batch, apply_fn({"params": params}, x, t_batch), "eps"
        )
        ab = schedule.alpha_bars[t]
        ab_prev = jnp.where(t_prev >= 0, schedule.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
        return jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev) * eps

    return step


def ddpm_step_fn(apply_fn: Callable, schedule: schedules.Schedule) -> Callable:
    """Jitted (params, x, t, step_key) -> x_{t-1}: one DDPM ancestral step (alg. 2, x0
    clipped, sigma^2 = beta_t, noise normal(fold_in(step_key, t))), as ``samplers.ddpm``."""

    @jaxdiff_xla_options.jit
    def step(params, x, t, step_key):
        t_batch = jnp.full((x.shape[0],), t, jnp.int32)
        x0, _ = schedules.to_x0_eps(
            schedule, x, t_batch, apply_fn({"params": params}, x, t_batch), "eps"
        )
        mean = samplers.posterior_mean(schedule, x, t, jnp.clip(x0, -1.0, 1.0))
        sigma = jnp.where(t > 0, jnp.sqrt(schedule.betas[t]), 0.0)
        return mean + sigma * jax.random.normal(jax.random.fold_in(step_key, t), x.shape)

    return step


def ddim_timesteps(num_timesteps: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, t_prev) pairs of ``samplers.ddim``: rounded linspace T-1..0, t_prev = -1 at the end."""
    ts = np.round(np.linspace(num_timesteps - 1, 0, num_steps)).astype(np.int32)
    return ts, np.append(ts[1:], -1).astype(np.int32)


def jax_train_setup(model, params, batch_np: dict[str, np.ndarray]):
    """(compiler options -> jitted step, initial state, sharded batch) for the real jaxdiff
    train step: eps loss (DDPM eq. 14), clip + AdamW + EMA, the batch split over all devices."""
    schedule = schedules.linear(NUM_TIMESTEPS)
    loss_fn = make_denoising_loss(model.apply, schedule, prediction="eps", cond_drop_prob=0.0)
    optimizer = make_optimizer(
        learning_rate=LEARNING_RATE, grad_clip=GRAD_CLIP, ema_decay=EMA_DECAY
    )
    mesh = make_mesh()
    state = create_train_state(params, optimizer, jax.random.key(1))

    def make_step(options):
        return make_train_step(loss_fn, optimizer, mesh, compiler_options=options)

    return make_step, state, shard_batch(batch_np, mesh)


def jax_train_callables(
    make_step, state, batch, **variant_kw
) -> dict[str, Callable[[], Any]]:
    """One blocking callable per compiled variant; each owns a copy of the (donated) state,
    steps it once per call and returns that step's metrics. Each carries its executable as
    ``.compiled`` (for ``timing.program_bytes``)."""
    fns = {}
    for name, compiled in jax_variants(make_step, (state, batch), **variant_kw).items():
        holder = {"state": jax.tree.map(jnp.copy, state)}

        def run(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], batch)
            return jax.block_until_ready(metrics)

        run.compiled = compiled
        fns[name] = run
    return fns


def init_params(model: Any, *args: Any, seed: int = 0) -> Any:
    """float32 params of ``model.init(key, *args)``'s shapes, drawn N(0, 0.02^2) on the host:
    no compile of the init program (on a CPU it took as long as the train step's), and the
    same speed as the paper's initialisation, which only the values differ from."""
    shapes = jax.eval_shape(model.init, jax.random.key(seed), *args)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.02, s.shape).astype(s.dtype)), shapes)


def count_params(params: Any) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def check_param_counts(name: str, jax_count: int, torch_count: int) -> None:
    """Prints both counts; raises SystemExit when they differ (the models are not twins)."""
    print(f"{name}: jaxdiff {jax_count:,} parameters, PyTorch {torch_count:,} parameters")
    if jax_count != torch_count:
        raise SystemExit(
            f"{name}: parameter counts differ ({jax_count} vs {torch_count}); the PyTorch "
            "model is not the same architecture, so its timing would not be comparable"
        )
    print(f"{name}: parameter counts match")
