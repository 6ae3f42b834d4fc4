"""experiments.evaluate --fid inception: FID comparable with papers (pytorch-fid's Inception
features, statistics and Frechet distance: ``jaxdiff.fid``) and improved precision/recall
(``jaxdiff.precision_recall``, k=3), for each sampler x steps x guidance scale of a run.

The reference is either an ``.npz`` of ``mu``/``sigma`` (``--ref_stats``: pytorch-fid's
format, e.g. written by ``--save_ref_stats`` or by pytorch-fid's ``--save-stats``) or the
features of up to ``--max_real`` real images of the run's data (the only case with precision
and recall: they need the real features themselves). Samples are drawn data-parallel over
every device of every process, quantised to uint8 levels like saved PNGs, and their
features are computed on the same mesh. With ``fid_seeds`` K, each setting is scored on K
disjoint seed blocks (seeds seed, ..., seed + K - 1; n samples each): mean and standard
deviation over the blocks. Writes ``eval_inception.json`` (with the exact command and the
package versions) and ``eval_inception.md``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from experiments.runs import (
    builders,
    conds,
    evaluation,
    kinds,
    latent,
    restore,
    sampler_assembly,
)
from experiments.runs.evaluation import default_sweep, real_images, sweep_settings
from jaxdiff import distributed, fid, inception, precision_recall
from jaxdiff import train as jd_train

VERSIONED = ("jax", "jaxlib", "flax", "numpy", "scipy", "jaxdiff")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def real_reference(config, params, *, mesh, split: str, max_real: int, seed: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(mu, sigma, features, n)`` of up to ``max_real`` real images of the run's data."""
    images, _ = real_images(config, split=split, max_images=max_real, seed=seed,
                            need_labels=False)
    with tqdm.tqdm(total=len(images), desc="real features", unit="image",
                   dynamic_ncols=True) as progress:
        features = fid.inception_features(params, images, batch_size=batch_size, mesh=mesh,
                                          progress=progress)
    return (*fid.gaussian_fit(features), features, len(images))


def save_reference_stats(workdir: str | pathlib.Path, path: str | pathlib.Path, *,
                         inception_weights: str, split: str | None = None,
                         max_real: int = 50_000, seed: int = 0,
                         feature_batch: int = 50) -> pathlib.Path:
    """Writes the Inception statistics of the run's real images (``config.data``, ``split``)
    to ``path`` (pytorch-fid's .npz) and returns it."""
    params = inception.load_pytorch_fid_weights(inception_weights)
    config = restore.load_run_config(pathlib.Path(workdir))
    split = split or config.data.get("split") or "train"
    mu, sigma, _, n = real_reference(config, params, mesh=jd_train.make_mesh(), split=split,
                                     max_real=max_real, seed=seed, batch_size=feature_batch)
    if distributed.is_main_process():
        fid.save_stats(path, mu, sigma)
    print(f"wrote the Inception statistics of {n} {config.data.source} {split} images to {path}")
    return pathlib.Path(path)


def evaluate_inception(
    workdir: str | pathlib.Path,
    *,
    inception_weights: str,
    ref_stats: str | None = None,
    samplers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    guidance: Sequence[float] | None = None,
    full: bool = False,
    num: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    split: str | None = None,
    max_real: int = 10_000,
    use_ema: bool = True,
    spacing: str | None = None,
    fid_seeds: int = 1,
    feature_batch: int = 50,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Runs the sweep; writes and returns the report (``results``: one dict per setting with
    ``fid`` (mean over the seed blocks), ``fid_std``, ``fid_per_seed``, ``precision``,
    ``recall`` (None against ``ref_stats``), ``sample_seconds``, ``feature_seconds``)."""
    if fid_seeds < 1:
        raise ValueError(f"--fid_seeds must be >= 1, got {fid_seeds}")
    weights_path = pathlib.Path(inception_weights)
    inception_params = inception.load_pytorch_fid_weights(weights_path)  # fail before sampling
    workdir = pathlib.Path(workdir)
    config = restore.load_run_config(workdir)
    model = kinds.build_model(config)
    schedule = builders.build_schedule(config)
    num_classes, context_dim = builders.cond_spec(model)
    conditional = bool(num_classes or context_dim)
    sweep = default_sweep(config, full=full)
    grid = sweep_settings(config, sweep["samplers"] if samplers is None else samplers,
                          sweep["steps"] if steps is None else steps,
                          sweep["guidance"] if guidance is None else guidance,
                          conditional=conditional)
    spacing = spacing or config.sample.get("spacing")
    split = split or config.data.get("split") or "train"
    mesh = jd_train.make_mesh()
    if ref_stats:
        mu_ref, sigma_ref = fid.load_stats(ref_stats)
        real_features, reference = None, {"stats": str(ref_stats)}
    else:
        mu_ref, sigma_ref, real_features, n_real = real_reference(
            config, inception_params, mesh=mesh, split=split, max_real=max_real, seed=seed,
            batch_size=feature_batch)
        reference = {"data": config.data.source, "name": config.data.get("name"),
                     "split": split, "num_images": n_real}
    n, batch = int(num), min(int(batch_size), int(num))
    params, ema, step = restore.restore_for_sampling(config, str(workdir), model)
    params = ema if use_ema else params
    classes = max(num_classes or 0, context_dim or 0)
    cond = conds.label_conds(model, np.arange(n, dtype=np.int32) % max(classes, 1))
    cond = None if cond is None else np.asarray(cond)
    results = []
    progress = tqdm.tqdm(total=len(grid) * fid_seeds * math.ceil(n / batch), desc="sample",
                         unit="batch", dynamic_ncols=True)
    with progress:
        for sampler_name, num_steps, scale in grid:
            sample_fn = sampler_assembly.make_sample_fn(
                model, schedule, sampler=sampler_name, steps=num_steps,
                eta=float(config.sample.eta), guidance_scale=scale,
                prediction=config.diffusion.prediction,
                shape=builders.image_shape(config, batch=batch),
                mesh=builders.batch_mesh(mesh, batch), spacing=spacing,
                decode=latent.decoder(config), config=config)
            first = None if cond is None else cond[:batch]
            compiled = sample_fn.lower(params, jax.random.key(seed), first, None).compile()
            fids, pr, sample_seconds, feature_seconds = [], [], 0.0, 0.0
            for block in range(fid_seeds):
                start = time.perf_counter()
                samples = evaluation.draw(
                    compiled, params, evaluation.cond_batches(cond, n=n, batch_size=batch),
                    key=jax.random.key(seed + block), n=n, progress=progress)
                sample_seconds += time.perf_counter() - start
                start = time.perf_counter()
                features = fid.inception_features(inception_params, samples,
                                                  batch_size=feature_batch, mesh=mesh)
                feature_seconds += time.perf_counter() - start
                fids.append(fid.frechet_distance(*fid.gaussian_fit(features), mu_ref, sigma_ref))
                if real_features is not None:
                    pr.append(precision_recall.precision_recall(real_features, features, k=3))
            results.append({
                "sampler": sampler_name, "steps": num_steps, "guidance_scale": scale,
                "fid": float(np.mean(fids)),
                "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else None,
                "fid_per_seed": fids,
                "precision": float(np.mean([p for p, _ in pr])) if pr else None,
                "recall": float(np.mean([r for _, r in pr])) if pr else None,
                "sample_seconds": sample_seconds, "feature_seconds": feature_seconds,
            })
    report = {
        "command": shlex.join(command if command is not None else sys.argv),
        "versions": versions(),
        "workdir": str(workdir), "checkpoint_step": int(step),
        "params": "ema" if use_ema else "raw",
        "inception_weights": {"path": str(weights_path), "sha256": file_sha256(weights_path)},
        "reference": reference,
        "num_samples": n, "fid_seeds": fid_seeds, "seeds": list(range(seed, seed + fid_seeds)),
        "spacing": spacing, "devices": jax.device_count(), "processes": jax.process_count(),
        "results": results,
    }
    if distributed.is_main_process():
        write_inception_report(workdir, report)
    return report


def write_inception_report(workdir: pathlib.Path, report: dict[str, Any]) -> dict[str, Any]:
    """Writes eval_inception.json and eval_inception.md; returns their paths."""
    paths = {ext: workdir / f"eval_inception.{ext}" for ext in ("json", "md")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    ref = report["reference"]
    against = (f"statistics {ref['stats']}" if "stats" in ref else
               f"{ref['num_images']} real {ref['data']} {ref['split']} images")
    spread = report["fid_seeds"] > 1
    lines = [
        f"# Inception FID of {report['workdir']} (step {report['checkpoint_step']}, "
        f"{report['params']} params)",
        "",
        f"- {report['num_samples']} samples per setting"
        + (f" and seed block ({report['fid_seeds']} blocks)" if spread else "")
        + f", against {against}; pytorch-fid's Inception-V3 features",
        f"- command: `{report['command']}`",
        "",
        f"| sampler | steps | guidance | FID |{' std |' if spread else ''} precision | recall |",
        f"| --- | ---: | ---: | ---: |{' ---: |' if spread else ''} ---: | ---: |",
    ]
    for r in report["results"]:
        pr = ("n/a | n/a" if r["precision"] is None
              else f"{r['precision']:.4f} | {r['recall']:.4f}")
        std = f" {r['fid_std']:.3f} |" if spread else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} | "
                     f"{r['fid']:.3f} |{std} {pr} |")
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths
