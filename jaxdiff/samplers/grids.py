"""Step grids: which timesteps a strided sampler (DDIM, DPM-Solver++) visits."""

from __future__ import annotations

from typing import Literal

import numpy as np

Spacing = Literal["linspace", "trailing", "leading"]
SPACINGS = ("linspace", "trailing", "leading")


def timestep_grid(
    num_timesteps: int, num_steps: int, spacing: Spacing = "linspace"
) -> tuple[np.ndarray, np.ndarray]:
    """The (ts, ts_prev) int32 lists of a strided sampler: step i goes from ts[i] to ts_prev[i],
    and ts_prev = -1 after the last step means "to the clean image" (alpha_bar = 1).

    * "linspace": ts = round(linspace(T-1, 0, num_steps)), DDIM's even spacing that ends at 0.
    * "trailing": ts = round(arange(T, 0, -T/num_steps)) - 1 (Lin et al. 2024, "Common
      Diffusion Noise Schedules and Sample Steps are Flawed", table 2): starts at T-1, and
      when num_steps divides T the grids of N and 2N steps nest, as progressive
      distillation needs (Salimans & Ho 2022, alg. 2).
    * "leading": ts = arange(num_steps) * (T // num_steps), noisiest first: DDIM's uniform
      skipping (Song et al. 2021, sec. 4.2) and diffusers' default ``timestep_spacing``; it
      ends at 0 and never visits the steps above (num_steps - 1) * (T // num_steps)
      (Lin et al. 2024, table 2).

    All are the full walk T-1, ..., 0 at num_steps = T. Built at trace time (static).
    """
    T, num_steps = int(num_timesteps), int(num_steps)
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be between 1 and the schedule's T={T}, got {num_steps}")
    if spacing == "linspace":
        ts = np.round(np.linspace(T - 1, 0, num_steps))
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps))[:num_steps] - 1
    elif spacing == "leading":
        ts = (np.arange(num_steps) * (T // num_steps))[::-1]
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    ts = ts.astype(np.int32)
    return ts, np.append(ts[1:], -1).astype(np.int32)
