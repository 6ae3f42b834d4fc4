"""The train loop's preview of a diffusion run: a grid of samples from the EMA params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from experiments.runs import builders, conds, sampler_assembly
from jaxdiff import viz


class SamplePreview:
    """A grid of samples from the EMA params: one row per class (with the config's CFG
    scale) for a conditional model. The same noise every time, so grids compare across
    steps. ``cond_and_show(num, ncol) -> (cond, show)`` replaces the grid's conditions and
    what is drawn of its images (a ControlNet's hints above the samples); ``decode`` turns a
    latent run's samples into images."""

    def __init__(self, config, model, schedule, workdir, key, mesh, *,
                 cond_and_show: Callable[[int, int], tuple[Any, Callable]] | None = None,
                 decode: Callable[[Any], Any] | None = None):
        s = config.sample
        self.cond, rows = conds.grid_conds(model, per_row=int(s.num))
        num = int(s.num) * rows if rows else int(s.num)
        self.ncol = sampler_assembly.grid_columns(num, rows)
        self.show = lambda images: images
        if cond_and_show is not None:
            self.cond, self.show = cond_and_show(num, self.ncol)
        self.scale = viz.display_scale(int(config.data.image_size))
        self.sample = sampler_assembly.make_sample_fn(
            model,
            schedule,
            sampler=s.sampler,
            steps=int(s.steps),
            eta=float(s.eta),
            guidance_scale=float(s.guidance_scale),
            prediction=config.diffusion.prediction,
            shape=builders.image_shape(config, batch=num),
            spacing=s.get("spacing"),
            mesh=builders.batch_mesh(mesh, num),
            decode=decode,
            config=config,
        )
        self.key = key
        self.dir = workdir / "samples"

    def write(self, step: int, params: Any, writer: Any) -> None:
        images, _ = self.sample(params, self.key, self.cond)  # every process computes
        if jax.process_count() > 1:  # rows on other processes' devices: gather them
            images = multihost_utils.process_allgather(images, tiled=True)
        if writer is None:  # not the main process
            return
        images = self.show(np.asarray(images))
        self.dir.mkdir(exist_ok=True)
        path = self.dir / f"step_{step:07d}.png"
        grid = viz.image_grid(np.asarray(images), ncol=self.ncol, scale=self.scale)
        viz.save_grid(str(path), np.asarray(images), ncol=self.ncol, scale=self.scale)
        writer.add_image("samples", grid, step, dataformats="HWC")
