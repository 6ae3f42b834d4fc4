"""The naive sampler of the corruption baseline (HF diffusion course, unit 1)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdiff import schedules
from jaxdiff.samplers._core import DenoiseFn, Result, initial, scan
from jaxdiff.schedules import CORRUPTION_TIMESTEPS, Schedule


def corruption(
    denoise_fn: DenoiseFn,
    schedule: Schedule | None,
    key: jax.Array,
    shape: tuple[int, ...],
    *,
    cond: Any = None,
    prediction: schedules.Prediction = "x0",
    keep_every: int = 0,
    num_steps: int = 5,
    initial_noise: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> Result:
    """The naive sampler of the corruption baseline (HF diffusion course, unit 1, "Diffusion
    from scratch"): start from uniform noise on [-1, 1], then for i in range(num_steps):
    pred = model(x); mix = 1 / (num_steps - i); x = x (1 - mix) + pred mix.

    The baseline model predicts the clean image directly, so ``prediction`` must be "x0".
    Had pred been exact, the input of step i is corrupted by amount (num_steps - i) /
    num_steps; t passes that amount on the 1000-step scale that
    ``losses.make_corruption_loss`` trains with (BasicUNet, like the course's ``net(x)``,
    ignores t). ``schedule`` is unused (None is fine). The last step has mix = 1: x = pred.
    """
    if prediction != "x0":
        raise ValueError(
            f"the corruption sampler needs a model that predicts the clean image "
            f"(prediction='x0'), got prediction={prediction!r}"
        )
    if int(num_steps) < 1:
        raise ValueError(f"corruption num_steps must be >= 1, got {num_steps}")
    num_steps = int(num_steps)
    if initial_noise is None:
        x_init = jax.random.uniform(key, shape, jnp.float32, minval=-1.0, maxval=1.0)
    else:
        x_init = initial(key, shape, initial_noise)

    def step(x, mix_and_t):
        mix, t = mix_and_t
        pred = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32), cond)
        return x * (1.0 - mix) + pred * mix

    remaining = num_steps - np.arange(num_steps)  # num_steps, ..., 1
    mixes = jnp.asarray(1.0 / remaining, jnp.float32)
    ts = jnp.asarray(np.round(remaining / num_steps * (CORRUPTION_TIMESTEPS - 1)), jnp.int32)
    return scan(step, x_init, (mixes, ts), num_steps=num_steps, keep_every=keep_every, mesh=mesh)
