"""Sample quality of a trained run: classifier-feature FID and class-conditional accuracy.

    python -m experiments.evaluate --workdir runs/digits          # quick: 2 settings
    python -m experiments.evaluate --workdir runs/digits --full   # the whole sweep
    python -m experiments.evaluate --workdir runs/digits --samplers ddim --steps 10,50 \\
        --guidance 0,3 --num 400
    python -m experiments.evaluate --workdir runs/digits_uncond --samplers ddim --steps 50 \
        --guidance 0 --classifier_workdir runs/digits_clf --classifier_scales 0,1,3,10

Loads the run's saved config and newest checkpoint (EMA params), trains a feature classifier
(``jaxdiff.models.classifier``) on one part of the run's real images, or reloads it from the
cache, and sweeps sampler x steps x guidance scale (x classifier-guidance scale with
``--classifier_workdir``, Dhariwal & Nichol 2021, which also makes an unconditional model's
samples conditional on their target labels, so they get an accuracy). By default the sweep is
the run's own preview sampler and steps (``config.sample``) at guidance 0 and at the config's
scale: two settings, about 2 minutes on the digits run on 2 CPU cores. ``--full`` sweeps DDPM
and DDIM at 10/25/50/100 steps and w = 0/1/3/5 (20 settings; 27 minutes on the digits run).
DDPM walks all T steps, so ``--steps`` applies to DDIM only; an unconditional model is
evaluated at guidance 0 only, and without a guiding classifier without accuracy. For every
setting it reports FID against held-out real images (in the classifier's feature space;
``jaxdiff.evaluation``) and the accuracy of the classifier on the samples with
the labels they were generated for. Two references put the numbers in context: the
classifier's own held-out accuracy, and the real-vs-real FID floor (two disjoint held-out
halves of the same size as the generated set, so the floor and every model FID are computed
at the same sample count: FID is biased upwards at small sizes). A model can score below
the floor when its training images include the held-out reference (the digits have a
single split): it may reproduce reference images, which a disjoint real half cannot.

The real images are the run's own ``config.data`` (resized/padded as in training), or
another split of it (``--split test``). Writes ``<workdir>/eval.json``, ``eval.md`` (a
markdown table) and ``eval.png`` (FID and accuracy against steps).
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import tqdm
from absl import app, flags

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from experiments import classifier_setup, from_config  # noqa: E402
from jaxdiff import data, evaluation, sources, viz  # noqa: E402
from jaxdiff.models.classifier import Classifier  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
_FULL = flags.DEFINE_bool("full", False, "Sweep every sampler, step count and scale of "
                          "FULL_SWEEP instead of the run's own sampler at 2 scales.")
_SAMPLERS = flags.DEFINE_list("samplers", None, "Samplers to sweep [config.sample.sampler].")
_STEPS = flags.DEFINE_list("steps", None, "DDIM steps to sweep [config.sample.steps].")
_GUIDANCE = flags.DEFINE_list("guidance", None, "CFG scales w to sweep "
                              "[0 and config.sample.guidance_scale].")
_NUM = flags.DEFINE_integer("num", 1000, "Samples per setting (capped at held-out size / 2).")
_BATCH = flags.DEFINE_integer("batch_size", 250, "Samples drawn per compiled sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples, the split and the classifier.")
_SPLIT = flags.DEFINE_string("split", None, "Data split of the real images (default: the run's).")
_MAX_REAL = flags.DEFINE_integer("max_real", 10_000, "Real images read at most.")
_HOLDOUT = flags.DEFINE_float("holdout", 0.5, "Fraction of real images held out of classifier "
                              "training; they are the FID reference.")
_CLASSIFIER_STEPS = flags.DEFINE_integer("classifier_steps", 1000, "Classifier training steps.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Feature-classifier cache (default "
                                 "<workdir>/feature_classifier).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample with the EMA params.")
_SPACING = flags.DEFINE_enum("spacing", None, ["linspace", "trailing"], "Timestep grid of ddim "
                             "and dpm_solver_pp (default: config.sample.spacing, else each "
                             "sampler's own).")
_CLASSIFIER_WORKDIR = flags.DEFINE_string(
    "classifier_workdir", None, "A noise-conditioned classifier run that guides the samples.")
_CLASSIFIER_SCALES = flags.DEFINE_list(
    "classifier_scales", ["0"], "Classifier-guidance scales s (with --classifier_workdir).")

WALKS_ALL_STEPS = ("ddpm", "ddpm_no_noise")
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

    Returns the report written to eval.json: ``num_samples``, ``classifier`` (held-out
    accuracy, sizes, cache), ``real_fid_floor`` and ``results``, one dict per setting with
    ``sampler``, ``steps``, ``guidance_scale``, ``classifier_scale``, ``fid``, ``accuracy``
    (None when unconditional and unguided), ``sample_seconds`` (all n samples, compile excluded) and
    ``compile_seconds``.
    """
    workdir = pathlib.Path(workdir)
    config = from_config.load_run_config(workdir)
    model = from_config.build_model(config)
    schedule = from_config.build_schedule(config)
    num_classes, context_dim = from_config.cond_spec(model)
    conditional = bool(num_classes or context_dim)
    sweep = default_sweep(config, full=full)
    samplers = sweep["samplers"] if samplers is None else samplers
    steps = sweep["steps"] if steps is None else steps
    guidance = sweep["guidance"] if guidance is None else guidance
    guide = None
    if classifier_workdir is not None:
        for sampler in samplers:
            for scale in classifier_scales:
                classifier_setup.validate_guidance(config, sampler=sampler, scale=float(scale))
        guide = classifier_setup.load_guide(str(classifier_workdir), config)
    elif any(float(s) != 0 for s in classifier_scales):
        raise ValueError("--classifier_scales other than 0 need --classifier_workdir")
    grid = [
        (*setting, float(s))
        for setting in _settings(config, samplers, steps, guidance, conditional=conditional)
        for s in (classifier_scales if guide else [0.0])
    ]
    # Guided by a classifier, an unconditional model's samples have target labels too.
    conditional = conditional or guide is not None
    spacing = spacing or config.sample.get("spacing")

    # Real images: classifier-training part and held-out part (accuracy + FID reference).
    split = split or config.data.get("split") or "train"
    images, labels = real_images(config, split=split, max_images=max_real, seed=seed)
    (train_x, train_y), (heldout_x, heldout_y) = evaluation.split_heldout(
        images, labels, fraction=holdout, seed=seed
    )
    n = min(int(num), len(heldout_x) // 2)
    if n < 2:
        raise ValueError(f"only {len(heldout_x)} held-out real images; raise --max_real/--holdout")
    if n < num:
        print(f"note: {n} samples per setting (half of the {len(heldout_x)} held-out real images)")
    num_labels = int(max(labels.max() + 1, num_classes or 0, context_dim or 0,
                         guide.num_classes if guide else 0))
    classifier = Classifier(num_classes=num_labels)
    cache_dir = pathlib.Path(cache_dir or workdir / "feature_classifier")
    print(f"feature classifier: {len(train_x)} training / {len(heldout_x)} held-out images")
    c_params, c_accuracy, cache_path, loaded = evaluation.load_or_train_feature_classifier(
        cache_dir, train_x, train_y, steps=classifier_steps, seed=seed,
        heldout=(heldout_x, heldout_y), model=classifier,
    )
    print(f"feature classifier {'loaded from' if loaded else 'trained, saved to'} {cache_path}: "
          f"held-out accuracy {c_accuracy:.4f}")
    _, real_features = evaluation.classifier_outputs(classifier, c_params, heldout_x[: 2 * n])
    reference, other_half = real_features[:n], real_features[n : 2 * n]
    floor = evaluation.fid(reference, other_half)

    params, ema, step = from_config.restore_for_sampling(config, str(workdir), model)
    params = ema if use_ema else params
    target_labels = np.arange(n, dtype=np.int32) % num_labels  # balanced classes
    key = jax.random.key(seed)
    results = []
    progress = tqdm.tqdm(total=len(grid) * math.ceil(n / batch_size), desc="evaluate",
                         unit="batch", dynamic_ncols=True)
    with progress:
        for sampler, num_steps, scale, classifier_scale in grid:
            progress.set_postfix(sampler=sampler, steps=num_steps, w=scale, s=classifier_scale)
            sample_fn = from_config.make_sample_fn(
                model, schedule, sampler=sampler, steps=num_steps,
                eta=float(config.sample.eta), guidance_scale=scale,
                prediction=config.diffusion.prediction,
                shape=from_config.image_shape(config, batch=min(batch_size, n)),
                spacing=spacing,
                classifier_apply=guide.apply if guide else None,
                classifier_scale=classifier_scale,
            )
            conds = _conds(model, target_labels)
            if guide is not None and conds is None:
                conds = jnp.asarray(target_labels)
            samples, compile_seconds, seconds = _generate(
                sample_fn, params, conds, key=key, n=n, batch_size=min(batch_size, n),
                progress=progress, classifier_params=guide.params if guide else None,
            )
            logits, features = evaluation.classifier_outputs(classifier, c_params, samples)
            results.append({
                "sampler": sampler,
                "steps": num_steps,
                "guidance_scale": scale,
                "classifier_scale": classifier_scale,
                "fid": evaluation.fid(features, reference),
                "accuracy": (
                    evaluation.conditional_accuracy(logits, target_labels) if conditional else None
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
            "heldout_accuracy": c_accuracy,
            "num_train": len(train_x),
            "num_heldout": len(heldout_x),
            "feature_dim": classifier.feature_dim,
            "steps": classifier_steps,
            "cache": str(cache_path),
            "loaded_from_cache": loaded,
        },
        "real_fid_floor": floor,
        "guiding_classifier": None if guide is None else {
            "workdir": guide.workdir, "checkpoint_step": guide.step},
        "results": results,
    }
    write_report(workdir, report)
    return report


def real_images(
    config: ml_collections.ConfigDict, *, split: str, max_images: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``max_images`` shuffled real images (N, H, W, C) in [-1, 1] and labels (N,),
    resized/padded exactly as experiments.train feeds them to the model."""
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
        if "label" in batch:
            batch_labels = batch["label"]
        elif "context" in batch and _one_hot(batch["context"]):
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


def _one_hot(context: np.ndarray) -> bool:
    return bool(np.all((context == 0) | (context == 1)) and np.all(context.sum(-1) == 1))


def _settings(
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
    for sampler in samplers:
        sampler_steps = (
            [int(config.diffusion.num_timesteps)] if sampler in WALKS_ALL_STEPS else steps
        )
        for num_steps in sampler_steps:
            for scale in guidance:
                from_config.validate_sampling(
                    config, sampler=sampler, steps=int(num_steps), eta=float(config.sample.eta),
                    guidance_scale=float(scale),
                )
                grid.append((sampler, int(num_steps), float(scale)))
    return grid


def _conds(model, labels: np.ndarray) -> Any:
    """The sampler's cond for target labels: int labels, one-hot contexts, or None."""
    num_classes, context_dim = from_config.cond_spec(model)
    if num_classes:
        return jnp.asarray(labels)
    if context_dim:
        return jnp.eye(context_dim, dtype=jnp.float32)[labels]
    return None


def _generate(
    sample_fn, params, conds, *, key, n: int, batch_size: int, progress, classifier_params=None
) -> tuple[np.ndarray, float, float]:
    """(samples, compile_seconds, sample_seconds): n samples in [-1, 1], quantised to uint8
    levels like the real images they are compared with. Batch i uses key fold_in(key, i), so
    every setting starts from the same noise (common random numbers make settings comparable
    at small n)."""
    batches = []
    for start in range(0, n, batch_size):
        cond = None
        if conds is not None:
            cond = conds[start : start + batch_size]
            if len(cond) < batch_size:  # pad the last batch: one compiled shape
                cond = jnp.concatenate([cond, conds[: batch_size - len(cond)]])
        batches.append(cond)
    start = time.perf_counter()
    compiled = sample_fn.lower(params, key, batches[0], classifier_params).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    out = []
    for i, cond in enumerate(batches):
        images, _ = compiled(params, jax.random.fold_in(key, i), cond, classifier_params)
        out.append(np.asarray(images))
        progress.update(1)
    sample_seconds = time.perf_counter() - start
    samples = viz.to_uint8(np.concatenate(out)[:n]).astype(np.float32) / 127.5 - 1.0
    return samples, compile_seconds, sample_seconds


def write_report(workdir: pathlib.Path, report: dict[str, Any]) -> dict[str, pathlib.Path]:
    """Writes eval.json, eval.md and eval.png; returns their paths."""
    paths = {ext: workdir / f"eval.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    c = report["classifier"]
    lines = [
        f"# Evaluation of {report['workdir']} (step {report['checkpoint_step']}, "
        f"{report['params']} params)",
        "",
        f"- {report['num_samples']} samples per setting; FID in the feature space of a "
        f"classifier ({c['feature_dim']} features) trained on {c['num_train']} real images",
        f"- classifier held-out accuracy: {c['heldout_accuracy']:.4f} ({c['num_heldout']} images)",
        f"- real-vs-real FID floor ({report['num_samples']} vs {report['num_samples']} held-out "
        f"images, the sample count of every FID below): {report['real_fid_floor']:.3f}",
    ]
    guide = report.get("guiding_classifier")
    if guide:
        lines.append(f"- classifier guidance by {guide['workdir']} (step "
                     f"{guide['checkpoint_step']})")
    lines += [
        "",
        f"| sampler | steps | guidance |{' classifier scale |' if guide else ''} FID | "
        "accuracy | sampling seconds |",
        f"| --- | ---: | ---: |{' ---: |' if guide else ''} ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        accuracy = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        classifier_scale = f" {r['classifier_scale']:g} |" if guide else ""
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} |"
                     f"{classifier_scale} {r['fid']:.3f} | {accuracy} | "
                     f"{r['sample_seconds']:.1f} |")
    paths["md"].write_text("\n".join(lines) + "\n")
    _plot(paths["png"], report)
    return paths


def _plot(path: pathlib.Path, report: dict[str, Any]) -> None:
    results = report["results"]
    with_accuracy = any(r["accuracy"] is not None for r in results)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(12 if with_accuracy else 7, 4),
                             squeeze=False)
    # One curve per (sampler, CFG w, classifier-guidance s).
    curves: dict[tuple[str, tuple[float, float]], list[dict[str, Any]]] = {}
    for r in results:
        scale = (r["guidance_scale"], r.get("classifier_scale", 0.0))
        curves.setdefault((r["sampler"], scale), []).append(r)
    scales = sorted({scale for _, scale in curves})
    colors = {w: plt.get_cmap("tab10")(i % 10) for i, w in enumerate(scales)}
    markers = {"ddpm": "s", "ddpm_no_noise": "D", "ddim": "o", "corruption": "v"}
    metrics = [("fid", "FID (classifier features)")]
    if with_accuracy:
        metrics.append(("accuracy", "class-conditional accuracy"))
    for ax, (metric, title) in zip(axes[0], metrics, strict=True):
        for (sampler, scale), points in curves.items():
            points = sorted(points, key=lambda r: r["steps"])
            # Colour = guidance scale, marker = sampler: the same w reads alike across samplers.
            ax.plot([p["steps"] for p in points], [p[metric] for p in points],
                    color=colors[scale], marker=markers.get(sampler, "^"),
                    label=f"{sampler}, w={scale[0]:g}"
                    + (f", s={scale[1]:g}" if report.get("guiding_classifier") else ""))
        reference = (report["real_fid_floor"] if metric == "fid"
                     else report["classifier"]["heldout_accuracy"])
        ax.axhline(reference, color="gray", linestyle="--")
        ax.annotate("real vs real" if metric == "fid" else "classifier on real images",
                    (0.01, reference), xycoords=("axes fraction", "data"), color="gray",
                    fontsize=8, va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    # One legend outside the plots, so it never hides a point.
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> None:
    from_config.start_cli(argv)
    with from_config.exit_on_user_error():
        if _WORKDIR.value is None:
            raise from_config.ConfigError("give --workdir, the directory experiments.train wrote")
        try:
            steps = None if _STEPS.value is None else [int(s) for s in _STEPS.value]
            guidance = None if _GUIDANCE.value is None else [float(w) for w in _GUIDANCE.value]
            classifier_scales = [float(s) for s in _CLASSIFIER_SCALES.value]
        except ValueError:
            raise from_config.ConfigError(
                "--steps takes integers, --guidance and --classifier_scales numbers, "
                "comma-separated"
            ) from None
        evaluate(
            _WORKDIR.value, samplers=_SAMPLERS.value, steps=steps, guidance=guidance,
            full=_FULL.value,
            num=_NUM.value, batch_size=_BATCH.value, seed=_SEED.value, split=_SPLIT.value,
            max_real=_MAX_REAL.value, holdout=_HOLDOUT.value,
            classifier_steps=_CLASSIFIER_STEPS.value, cache_dir=_CACHE_DIR.value,
            use_ema=_USE_EMA.value, spacing=_SPACING.value,
            classifier_workdir=_CLASSIFIER_WORKDIR.value, classifier_scales=classifier_scales,
        )
        print((pathlib.Path(_WORKDIR.value) / "eval.md").read_text())


if __name__ == "__main__":
    app.run(main, flags_parser=from_config.parse_flags)
