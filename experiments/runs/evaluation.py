"""experiments.evaluate's sweep: sample quality of a trained run as classifier-feature FID
and class-conditional accuracy, for each sampler x steps x guidance scale (x classifier-
guidance scale). ``evaluate`` reads the run, ``reference`` makes the real-image side (the
feature classifier and the real-vs-real FID floor), ``evaluate_setting`` scores one setting
and ``eval_report.write_report`` writes the result."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from experiments.runs import (
    autoencoder,
    builders,
    classifier,
    conds,
    kinds,
    latent,
    restore,
    sampler_assembly,
    validation,
)
from experiments.runs.eval_report import write_report
from jaxdiff import data, distributed, evaluation, sources, viz
from jaxdiff import train as jd_train
from jaxdiff.models.classifier import Classifier

FULL_SWEEP = {"samplers": ("ddpm", "ddim"), "steps": (10, 25, 50, 100),
              "guidance": (0.0, 1.0, 3.0, 5.0)}


def default_sweep(
    config: ml_collections.ConfigDict, *, full: bool = False
) -> dict[str, tuple[Any, ...]]:
    """The samplers, steps and guidance scales swept when none are given: FULL_SWEEP with
    ``full``, else the run's preview sampler and steps (``config.sample``) at guidance 0 and
    at the config's scale (just 0 when that is 0)."""
    if full:
        return dict(FULL_SWEEP)
    s = config.sample
    scales = sorted({0.0, float(s.guidance_scale)})
    return {"samplers": (s.sampler,), "steps": (int(s.steps),), "guidance": tuple(scales)}


@dataclasses.dataclass(frozen=True)
class Reference:
    """The real-image side of the evaluation: the feature classifier (trained or loaded), the
    held-out features every FID is computed against and the real-vs-real floor."""

    classifier: Classifier
    params: Any
    accuracy: float
    cache_path: pathlib.Path
    loaded: bool
    features: np.ndarray
    floor: float
    num_samples: int
    num_train: int
    num_heldout: int


def reference(config, *, num: int, num_labels_at_least: int, split: str, max_real: int,
              holdout: float, seed: int, classifier_steps: int,
              cache_dir: pathlib.Path) -> Reference:
    """Real images split into a classifier-training part and a held-out part (accuracy and
    the FID reference), the feature classifier, and the floor of two held-out halves."""
    images, labels = real_images(config, split=split, max_images=max_real, seed=seed)
    (train_x, train_y), (heldout_x, heldout_y) = evaluation.split_heldout(
        images, labels, fraction=holdout, seed=seed
    )
    n = min(int(num), len(heldout_x) // 2)
    if n < 2:
        raise ValueError(f"only {len(heldout_x)} held-out real images; raise --max_real/--holdout")
    if n < num:
        print(f"note: {n} samples per setting (half of the {len(heldout_x)} held-out real images)")
    model = Classifier(num_classes=int(max(labels.max() + 1, num_labels_at_least)))
    print(f"feature classifier: {len(train_x)} training / {len(heldout_x)} held-out images")
    params, accuracy, cache_path, loaded = evaluation.load_or_train_feature_classifier(
        cache_dir, train_x, train_y, steps=classifier_steps, seed=seed,
        heldout=(heldout_x, heldout_y), model=model,
    )
    print(f"feature classifier {'loaded from' if loaded else 'trained, saved to'} {cache_path}: "
          f"held-out accuracy {accuracy:.4f}")
    _, real_features = evaluation.classifier_outputs(model, params, heldout_x[: 2 * n])
    features, other_half = real_features[:n], real_features[n : 2 * n]
    return Reference(model, params, accuracy, cache_path, loaded, features,
                     evaluation.fid(features, other_half), n, len(train_x), len(heldout_x))


def evaluate(
    workdir: str | pathlib.Path,
    *,
    samplers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    guidance: Sequence[float] | None = None,
    full: bool = False,
    num: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    split: str | None = None,
    max_real: int = 10_000,
    holdout: float = 0.5,
    classifier_steps: int = 1000,
    cache_dir: str | pathlib.Path | None = None,
    use_ema: bool = True,
    spacing: str | None = None,
    classifier_workdir: str | pathlib.Path | None = None,
    classifier_scales: Sequence[float] = (0.0,),
) -> dict[str, Any]:
    """Runs the sweep and writes eval.json / eval.md / eval.png into ``workdir``.

    ``samplers``, ``steps`` and ``guidance`` left as None come from ``default_sweep(config,
    full=full)``.

    An autoencoder run (configs/mnist_vae.py) reports its reconstruction error instead
    (experiments/runs/autoencoder.py). Returns the report written to eval.json:
    ``num_samples``, ``classifier`` (held-out accuracy, sizes, cache), ``real_fid_floor``
    and ``results``, one dict per setting with ``sampler``, ``steps``, ``guidance_scale``,
    ``classifier_scale``, ``fid``, ``accuracy`` (None when unconditional and unguided),
    ``sample_seconds`` (all n samples, compile excluded) and ``compile_seconds``.
    """
    workdir = pathlib.Path(workdir)
    config = restore.load_run_config(workdir)
    if autoencoder.is_autoencoder(config):  # no samples: the reconstruction error
        return autoencoder.evaluate(workdir, config, num=num, batch_size=batch_size,
                                    use_ema=use_ema)
    model = kinds.build_model(config)
    schedule = builders.build_schedule(config)
    num_classes, context_dim = builders.cond_spec(model)
    conditional = bool(num_classes or context_dim)
    sweep = default_sweep(config, full=full)
    samplers = sweep["samplers"] if samplers is None else samplers
    steps = sweep["steps"] if steps is None else steps
    guidance = sweep["guidance"] if guidance is None else guidance
    guide = load_guide(config, classifier_workdir, samplers, classifier_scales)
    grid = [
        (*setting, float(s))
        for setting in sweep_settings(config, samplers, steps, guidance, conditional=conditional)
        for s in (classifier_scales if guide else [0.0])
    ]
    # Guided by a classifier, an unconditional model's samples have target labels too.
    conditional = conditional or guide is not None
    spacing = spacing or config.sample.get("spacing")
    split = split or config.data.get("split") or "train"
    ref = reference(
        config, num=num, split=split, max_real=max_real, holdout=holdout, seed=seed,
        classifier_steps=classifier_steps,
        num_labels_at_least=max(num_classes or 0, context_dim or 0,
                                guide.num_classes if guide else 0),
        cache_dir=pathlib.Path(cache_dir or workdir / "feature_classifier"),
    )
    n = ref.num_samples
    params, ema, step = restore.restore_for_sampling(config, str(workdir), model)
    params = ema if use_ema else params
    target_labels = np.arange(n, dtype=np.int32) % ref.classifier.num_classes  # balanced
    cond = conds.label_conds(model, target_labels)
    if guide is not None and cond is None:
        cond = jnp.asarray(target_labels)
    key = jax.random.key(seed)
    mesh = jd_train.make_mesh()  # every device of every process samples its share
    decode = latent.decoder(config)  # a latent run's samples are decoded to images
    results = []
    progress = tqdm.tqdm(total=len(grid) * math.ceil(n / batch_size), desc="evaluate",
                         unit="batch", dynamic_ncols=True,
                         disable=not distributed.is_main_process())
    with progress:
        for sampler_name, num_steps, scale, classifier_scale in grid:
            progress.set_postfix(sampler=sampler_name, steps=num_steps, w=scale,
                                 s=classifier_scale)
            sample_fn = sampler_assembly.make_sample_fn(
                model, schedule, sampler=sampler_name, steps=num_steps,
                eta=float(config.sample.eta), guidance_scale=scale,
                prediction=config.diffusion.prediction,
                shape=builders.image_shape(config, batch=min(batch_size, n)),
                mesh=builders.batch_mesh(mesh, min(batch_size, n)),
                spacing=spacing,
                classifier_apply=guide.apply if guide else None,
                classifier_scale=classifier_scale, decode=decode, config=config,
            )
            samples, compile_seconds, seconds = generate(
                sample_fn, params, cond, key=key, n=n, batch_size=min(batch_size, n),
                progress=progress, classifier_params=guide.params if guide else None,
            )
            logits, features = evaluation.classifier_outputs(ref.classifier, ref.params, samples)
            results.append({
                "sampler": sampler_name,
                "steps": num_steps,
                "guidance_scale": scale,
                "classifier_scale": classifier_scale,
                "fid": evaluation.fid(features, ref.features),
                "accuracy": (
                    evaluation.conditional_accuracy(logits, target_labels)
                    if conditional else None
                ),
                "sample_seconds": seconds,
                "compile_seconds": compile_seconds,
            })
    report = {
        "workdir": str(workdir),
        "checkpoint_step": int(step),
        "params": "ema" if use_ema else "raw",
        "data": {"source": config.data.source, "name": config.data.get("name"), "split": split},
        "num_timesteps": int(schedule.num_timesteps),
        "num_samples": n,
        "spacing": spacing,
        "seed": seed,
        "classifier": {
            "heldout_accuracy": ref.accuracy,
            "num_train": ref.num_train,
            "num_heldout": ref.num_heldout,
            "feature_dim": ref.classifier.feature_dim,
            "steps": classifier_steps,
            "cache": str(ref.cache_path),
            "loaded_from_cache": ref.loaded,
        },
        "real_fid_floor": ref.floor,
        "guiding_classifier": None if guide is None else {
            "workdir": guide.workdir, "checkpoint_step": guide.step},
        "results": results,
    }
    if distributed.is_main_process():
        write_report(workdir, report)
    return report


def load_guide(config, classifier_workdir, samplers, classifier_scales):
    """The guiding classifier of ``classifier_workdir`` (checked against every sampler and
    scale of the sweep), or None."""
    if classifier_workdir is None:
        if any(float(s) != 0 for s in classifier_scales):
            raise ValueError("--classifier_scales other than 0 need --classifier_workdir")
        return None
    for name in samplers:
        for scale in classifier_scales:
            classifier.validate_guidance(config, sampler=name, scale=float(scale))
    return classifier.load_guide(str(classifier_workdir), config)


def real_images(
    config: ml_collections.ConfigDict, *, split: str, max_images: int, seed: int,
    need_labels: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_images`` shuffled real images (N, H, W, C) in [-1, 1] and labels (N,),
    resized/padded exactly as experiments.train feeds them to the model (without
    ``need_labels``, unlabelled data are read too, their labels all 0)."""
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.split = split
    source = sources.make_source(data_config)
    resize_to = config.data.get("resize_to")
    batches = data.make_pipeline(
        source, batch_size=min(256, len(source)), seed=seed, num_epochs=1,
        drop_remainder=False, image_size=int(resize_to or config.data.image_size),
        pad_to=int(config.data.image_size) if resize_to else None,
        shard_index=0, shard_count=1, prefetch=0,
    )
    images, labels, count = [], [], 0
    for batch in batches:
        if not need_labels:
            batch_labels = np.zeros(len(batch["image"]), np.int32)
        elif "label" in batch:
            batch_labels = batch["label"]
        elif "context" in batch and is_one_hot(batch["context"]):
            batch_labels = batch["context"].argmax(-1)  # e.g. the sprites' one-hot categories
        else:
            raise ValueError(
                f"the {config.data.source} data have no class labels (nor one-hot contexts); "
                "the evaluation classifier needs them"
            )
        images.append(batch["image"])
        labels.append(np.asarray(batch_labels, np.int32))
        count += len(batch["image"])
        if count >= max_images:
            break
    return np.concatenate(images)[:max_images], np.concatenate(labels)[:max_images]


def is_one_hot(context: np.ndarray) -> bool:
    return bool(np.all((context == 0) | (context == 1)) and np.all(context.sum(-1) == 1))


def sweep_settings(
    config: ml_collections.ConfigDict,
    samplers: Sequence[str],
    steps: Sequence[int],
    guidance: Sequence[float],
    *,
    conditional: bool,
) -> list[tuple[str, int, float]]:
    """(sampler, steps, guidance_scale) per setting, all validated before any work."""
    if not samplers or not steps or not guidance:
        raise ValueError("--samplers, --steps and --guidance each need at least one value")
    if not conditional:
        if 0 not in [float(w) for w in guidance]:
            raise ValueError("the model is unconditional: only --guidance 0 can be evaluated")
        guidance = [0.0]
    grid = []
    for name in samplers:
        sampler_steps = (
            [int(config.diffusion.num_timesteps)] if name in validation.WALKS_ALL_STEPS else steps
        )
        for num_steps in sampler_steps:
            for scale in guidance:
                validation.validate_sampling(
                    config, sampler=name, steps=int(num_steps), eta=float(config.sample.eta),
                    guidance_scale=float(scale),
                )
                grid.append((name, int(num_steps), float(scale)))
    return grid


def generate(
    sample_fn, params, conds, *, key, n: int, batch_size: int, progress, classifier_params=None
) -> tuple[np.ndarray, float, float]:
    """(samples, compile_seconds, sample_seconds): ``draw`` after compiling ``sample_fn``
    for the batches of ``cond_batches``."""
    batches = cond_batches(conds, n=n, batch_size=batch_size)
    start = time.perf_counter()
    compiled = sample_fn.lower(params, key, batches[0], classifier_params).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = draw(compiled, params, batches, key=key, n=n, progress=progress,
                   classifier_params=classifier_params)
    return samples, compile_seconds, time.perf_counter() - start


def cond_batches(conds, *, n: int, batch_size: int) -> list:
    """The conditions of each batch of ``n`` samples (None for an unconditional model); the
    last batch is padded with the first rows, so every batch has one compiled shape."""
    batches = []
    for start in range(0, n, batch_size):
        cond = None
        if conds is not None:
            cond = conds[start : start + batch_size]
            if len(cond) < batch_size:
                pad = conds[: batch_size - len(cond)]
                cond = jnp.concatenate([jnp.asarray(cond), jnp.asarray(pad)])
        batches.append(cond)
    return batches


def draw(
    compiled, params, batches, *, key, n: int, progress, classifier_params=None
) -> np.ndarray:
    """n samples in [-1, 1], quantised to uint8 levels like the real images they are compared
    with, on every process (each samples its devices' rows of a batch sharded over the whole
    mesh; the rows are then gathered). Batch i uses key fold_in(key, i), so every setting
    starts from the same noise (common random numbers make settings comparable at small n)."""
    out = []
    for i, cond in enumerate(batches):
        images, _ = compiled(params, jax.random.fold_in(key, i), cond, classifier_params)
        if jax.process_count() > 1:
            images = multihost_utils.process_allgather(images, tiled=True)
        out.append(np.asarray(images))
        progress.update(1)
    return viz.to_uint8(np.concatenate(out)[:n]).astype(np.float32) / 127.5 - 1.0
