"""experiments.sample ``--pretrained`` on a diffusers ``DiTPipeline`` folder (e.g.
``facebook/DiT-XL-2-256``): class-conditional latents from the DiT, decoded by the folder's
autoencoder, in pure JAX (``jaxdiff.pretrained.load_dit_pipeline``, ``jaxdiff.latent``).

``--guidance_scale`` is jaxdiff's CFG w: diffusers' ``guidance_scale=4`` is w = 3. ddpm
walks all T steps with the learned variance of a learned-sigma DiT; ddim and dpm_solver_pp
stride over ``--steps`` on the "trailing" grid and use the eps half.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np

from experiments.runs import conds
from experiments.runtime.errors import ConfigError
from jaxdiff import latent, pretrained, viz

DEFAULTS = {"sampler": "ddim", "steps": 50, "eta": 0.0, "guidance_scale": 3.0, "num": 1}
GIF_FRAMES = 10


def sample_pipeline(
    path: str, *, sampler: str | None, steps: int | None, eta: float | None,
    guidance_scale: float | None, labels: str, num: int | None, seed: int, out: str | None,
) -> dict[str, Any]:
    """Samples ``num`` images per label of ``labels`` and writes ``grid.png``,
    ``denoising.gif`` (decoded frames) and ``samples.npz`` to ``out``."""
    pipe = pretrained.load_dit_pipeline(path)
    sampler = sampler or DEFAULTS["sampler"]
    if sampler not in ("ddpm", *latent.STRIDED):
        raise ConfigError(
            f"a DiTPipeline samples with ddpm, ddim or dpm_solver_pp, not {sampler!r}")
    steps = int(steps or DEFAULTS["steps"])
    w = float(DEFAULTS["guidance_scale"] if guidance_scale is None else guidance_scale)
    if labels == "all":
        raise ConfigError(f"the DiT has {pipe.model.num_classes} classes: give --labels, e.g. "
                          "--labels 207,360,387")
    cond, ncol = conds.requested_conds(pipe.model, labels=labels, context="all",
                                       num=int(num or DEFAULTS["num"]))
    walked = pipe.schedule.num_timesteps if sampler == "ddpm" else steps
    shape = (len(cond), pipe.latent_size, pipe.latent_size, pipe.latent_channels)

    @jax.jit
    def run(params, vae_params, key, cond):
        z, trajectory = latent.sample_latents(
            pipe.model, params, pipe.schedule, key, shape=shape, cond=cond, sampler=sampler,
            steps=steps, eta=float(DEFAULTS["eta"] if eta is None else eta), guidance_scale=w,
            prediction=pipe.prediction, clip_x0=pipe.clip_sample, variance=pipe.variance,
            keep_every=max(1, walked // GIF_FRAMES))
        frames = jax.lax.map(lambda f: latent.decode(pipe.vae, vae_params, f), trajectory)
        return latent.decode(pipe.vae, vae_params, z), frames

    start = time.perf_counter()
    images, frames = jax.block_until_ready(
        run(pipe.params, pipe.vae_params, jax.random.key(seed), cond))
    seconds = time.perf_counter() - start
    name = pathlib.Path(path).resolve().name
    out_dir = pathlib.Path(out or f"pretrained_{name}/sample_{sampler}")
    out_dir.mkdir(parents=True, exist_ok=True)
    images, frames = np.asarray(images), np.asarray(frames)
    scale = viz.display_scale(images.shape[1])
    result = {
        "images": viz.to_uint8(images),
        "grid": viz.save_grid(out_dir / "grid.png", images, ncol=ncol, scale=scale),
        "gif": viz.save_gif(out_dir / "denoising.gif", frames, ncol=ncol, scale=scale),
        "npz": out_dir / "samples.npz",
        "seconds": seconds,
    }
    np.savez_compressed(result["npz"], images=result["images"], labels=np.asarray(cond))
    print(f"sampled {len(images)} images with {sampler} ({walked} steps, guidance_scale={w}) "
          f"from {path} in {seconds:.1f} s (compile included); wrote {result['grid']}, "
          f"{result['gif']}, {result['npz']}")
    return result

