"""Config -> objects for training an autoencoder of latent diffusion (configs/mnist_vae.py).

An autoencoder run is an ordinary ``experiments.train`` run whose config has
``model.name = "autoencoder"`` (``jaxdiff.models.autoencoder.AutoencoderKL``'s fields) and
an ``autoencoder`` section (``kl_weight``, ``reconstruction`` "l1" | "l2"); ``kinds`` hands
such configs here. The loss is ``jaxdiff.autoencoder_loss`` (reconstruction + KL, no
discriminator). Instead of sample grids, training writes reconstructions of held-out images
(``reconstructions/step_*.png``: originals above their reconstructions) and their error
(``reconstruction.json``: per-pixel MSE and L1 in [-1, 1] units, on the posterior mean).
``experiments.evaluate`` on an autoencoder run measures the same on ``--num`` images
(``evaluate``).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.runs import restore, training_data
from experiments.runtime.errors import ConfigError
from jaxdiff import viz
from jaxdiff.autoencoder_loss import RECONSTRUCTIONS, make_autoencoder_loss
from jaxdiff.models.autoencoder import AutoencoderKL

NUM_SHOWN = 16


def is_autoencoder(config: ml_collections.ConfigDict) -> bool:
    return config.model.name == "autoencoder"


def validate(config: ml_collections.ConfigDict) -> None:
    """The autoencoder-specific checks: the image side a multiple of the downsampling."""
    a = config.get("autoencoder", {})
    if a.get("reconstruction", "l1") not in RECONSTRUCTIONS:
        raise ConfigError(f"autoencoder.reconstruction must be one of {RECONSTRUCTIONS}, got "
                          f"{a.get('reconstruction')!r}")
    if float(a.get("kl_weight", 0.0)) < 0:
        raise ConfigError(f"autoencoder.kl_weight must be >= 0, got {a.get('kl_weight')}")
    f = 2 ** (len(config.model.block_out_channels) - 1)
    if int(config.data.image_size) % f:
        raise ConfigError(f"data.image_size={config.data.image_size} must be a multiple of the "
                          f"autoencoder's downsampling {f}; pad the images (data.resize_to)")


def build_model(config: ml_collections.ConfigDict) -> AutoencoderKL:
    fields = {k: tuple(v) if isinstance(v, list) else v
              for k, v in config.model.to_dict().items() if k != "name"}
    fields.pop("dtype", None)  # float32: a small autoencoder gains nothing from bf16
    fields.setdefault("in_channels", int(config.data.channels))
    fields.setdefault("out_channels", int(config.data.channels))
    return AutoencoderKL(**fields)


def build_loss(config: ml_collections.ConfigDict, model: AutoencoderKL):
    a = config.get("autoencoder", {})
    return make_autoencoder_loss(model.apply, kl_weight=float(a.get("kl_weight", 1e-3)),
                                 reconstruction=str(a.get("reconstruction", "l1")))


def held_out_images(config: ml_collections.ConfigDict, num: int) -> np.ndarray:
    """The first ``num`` images of the run's data pipeline (unshuffled), float32 in [-1, 1]."""
    batch = next(iter(training_data.build_data(
        ml_collections.ConfigDict({**config.to_dict(),
                                   "data": {**config.data.to_dict(), "batch_size": num}}),
        shuffle=False)))
    return np.asarray(batch["image"], np.float32)


class ReconstructionPreview:
    """Reconstructions (posterior means decoded) of the same held-out images at each preview,
    and their error in ``reconstruction.json``."""

    def __init__(self, config, model, workdir):
        self.model = model
        self.images = jnp.asarray(held_out_images(config, NUM_SHOWN))
        self.dir = pathlib.Path(workdir) / "reconstructions"
        self.scale = viz.display_scale(int(config.data.image_size))
        self.reconstruct = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])

    def write(self, step: int, params: Any, writer: Any) -> None:
        recon = np.clip(np.asarray(self.reconstruct(params, self.images)), -1, 1)
        if writer is None:
            return
        images = np.asarray(self.images)
        self.dir.mkdir(exist_ok=True)
        viz.save_grid(self.dir / f"step_{step:07d}.png", np.concatenate([images, recon]),
                      ncol=NUM_SHOWN, scale=self.scale)
        err = {"step": step, "mse": float(np.mean((recon - images) ** 2)),
               "l1": float(np.mean(np.abs(recon - images)))}
        (self.dir.parent / "reconstruction.json").write_text(json.dumps(err, indent=2) + "\n")
        writer.add_scalar("reconstruction_mse", err["mse"], step)


def evaluate(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *, num: int,
             batch_size: int, use_ema: bool = True) -> dict[str, Any]:
    """Reconstruction error (posterior means decoded, clipped to [-1, 1]) of the first
    ``num`` images of the run's data: per-pixel MSE, L1 and PSNR (peak-to-peak 2) in
    eval.json / eval.md. Returns the report."""
    workdir = pathlib.Path(workdir)
    model = build_model(config)
    params, ema, step = restore.restore_for_sampling(config, str(workdir), model)
    params = ema if use_ema else params
    images = held_out_images(config, num)
    reconstruct = jax.jit(lambda p, x: jnp.clip(model.apply({"params": p}, x)[0], -1, 1))
    recon = np.concatenate([np.asarray(reconstruct(params, images[i:i + batch_size]))
                            for i in range(0, len(images), batch_size)])
    mse = float(np.mean((recon - images) ** 2))
    report = {"workdir": str(workdir), "checkpoint_step": int(step),
              "params": "ema" if use_ema else "raw", "num_images": len(images), "mse": mse,
              "l1": float(np.mean(np.abs(recon - images))),
              "psnr_db": float(10 * np.log10(4.0 / mse))}
    (workdir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (workdir / "eval.md").write_text(
        "| images | MSE | L1 | PSNR (dB) |\n| --- | --- | --- | --- |\n"
        f"| {report['num_images']} | {mse:.5f} | {report['l1']:.4f} | {report['psnr_db']:.2f} |\n")
    return report
