"""experiments.sample's run: from a workdir (or a diffusers folder) to a grid, a GIF and an
npz of samples. Each mode is one function: where the model comes from (``load_run``), the
sampler options (``resolve_options``), the conditions (``sample_conds``: labels, contexts,
a guiding classifier's labels, a ControlNet's hints), the outputs (``write_outputs``), the
side-by-side comparison (``write_comparison``) and a ControlNet's hint scores
(``write_hint_report``)."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from experiments.runs import (
    builders,
    classifier,
    conds,
    controlnet,
    distillation,
    finetune,
    hint_report,
    kinds,
    latent,
    pipeline_sampling,
    restore,
    sampler_assembly,
    validation,
)
from experiments.runs import depth_estimator as depth_runs
from experiments.runtime.errors import ConfigError
from jaxdiff import distributed, viz
from jaxdiff import pretrained as jd_pretrained
from jaxdiff import train as jd_train

GIF_FRAMES = 40


@dataclasses.dataclass(frozen=True)
class Options:
    """Sampler options: the flags given, config.sample's values for the others."""

    sampler: str
    steps: int
    eta: float
    guidance_scale: float
    num: int
    compare: str | None


@dataclasses.dataclass
class Run:
    """What is sampled: the run's config, its workdir, and params already in memory (a
    diffusers folder's) or None (restored from the workdir's newest checkpoint)."""

    config: ml_collections.ConfigDict
    workdir: str
    steps: int | None
    params: Any = None


def load_run(workdir: str | None, *, pretrained: str | None, steps: int | None) -> Run:
    """A diffusers folder (``pretrained``), a distillation workdir (its ``steps``-step
    student) or an ordinary workdir."""
    if pretrained:
        from configs import common

        config, params = finetune.pretrained_run(pretrained, common.base_config())
        workdir = workdir or f"pretrained_{pathlib.Path(pretrained).resolve().name}"
        return Run(config, workdir, steps, params)
    workdir, steps = distillation.student_for_sampling(workdir, steps)
    return Run(restore.load_run_config(workdir), workdir, steps)


def resolve_options(config: ml_collections.ConfigDict, *, sampler: str | None,
                    steps: int | None, eta: float | None, guidance_scale: float | None,
                    num: int | None, compare: str | None) -> Options:
    """The options, checked against the run's config (ConfigError)."""
    s = config.sample
    options = Options(
        sampler=sampler or s.sampler,
        steps=int(steps if steps is not None else s.steps),
        eta=float(eta if eta is not None else s.eta),
        guidance_scale=float(guidance_scale if guidance_scale is not None else s.guidance_scale),
        num=int(num if num is not None else s.num),
        compare=compare,
    )
    if options.num < 1:
        raise ConfigError(f"--num must be >= 1, got {options.num}")
    for name in (options.sampler, compare) if compare else (options.sampler,):
        validation.validate_sampling(config, sampler=name, steps=options.steps, eta=options.eta,
                                     guidance_scale=options.guidance_scale)
    return options


def sample_conds(config, model, *, labels: str, context: str, num: int, guide, hint_image,
                 compute_hint: bool, hint_type, hints_from_data) -> tuple[Any, int]:
    """(cond, ncol): ``num`` images per label / context row; a ControlNet's hints added."""
    cond, ncol = conds.requested_conds(
        model, labels=labels, context=context, num=num,
        guide_classes=guide.num_classes if guide else None,
    )
    if not controlnet.enabled(config):
        return cond, ncol
    cond, _ = controlnet.sample_conds(
        config, cond, num=num, hint_image=hint_image, compute_hint=compute_hint,
        hint_type=hint_type, hints_from_data=hints_from_data,
    )
    if hints_from_data is not None:
        ncol = sampler_assembly.grid_columns(len(cond["hint"]), 0)
    return cond, ncol


def sample(
    workdir: str,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    guidance_scale: float | None = None,
    labels: str = "all",
    context: str = "all",
    num: int | None = None,
    seed: int = 0,
    use_ema: bool = True,
    out: str | None = None,
    compare: str | None = None,
    pretrained: str | None = None,
    classifier_workdir: str | None = None,
    classifier_scale: float = 1.0,
    hint_image: str | None = None,
    compute_hint: bool = False,
    hint_type: str | None = None,
    hints_from_data: int | None = None,
    depth_estimator: str | None = None,
) -> dict[str, Any]:
    """Samples from ``workdir``'s newest checkpoint and writes grid, GIF and npz to ``out``.

    With ``compare`` (another sampler's name), also runs that sampler with the same key, so
    from the same initial noise, and writes both grids side by side to ``compare.png``.

    With ``classifier_workdir``, classifier guidance of scale ``classifier_scale`` (on top of
    CFG for a conditional model) steers each image toward its label; an unconditional model
    then draws ``num`` images per label too.

    A ControlNet run sampled ``hints_from_data`` also writes ``hint_report.json``
    (``write_hint_report``; ``depth_estimator``: the run that reads depth hints back).

    Returns {'images': uint8 (N, H, W, C), 'grid', 'gif', 'npz': paths, 'seconds': float,
    and 'compare': path when asked}.
    """
    if pretrained and jd_pretrained.is_dit_pipeline(pretrained):  # latent DiT + autoencoder
        return pipeline_sampling.sample_pipeline(
            pretrained, sampler=sampler, steps=steps, eta=eta, guidance_scale=guidance_scale,
            labels=labels, num=num, seed=seed, out=out)
    run = load_run(workdir, pretrained=pretrained, steps=steps)
    config = run.config
    o = resolve_options(config, sampler=sampler, steps=run.steps, eta=eta,
                        guidance_scale=guidance_scale, num=num, compare=compare)
    guide = None
    if classifier_workdir:
        classifier.validate_guidance(config, sampler=o.sampler, scale=classifier_scale)
        guide = classifier.load_guide(classifier_workdir, config)
    model = kinds.kind_of(config).build_model(config, run.workdir)
    schedule = builders.build_schedule(config)
    cond, ncol = sample_conds(
        config, model, labels=labels, context=context, num=o.num, guide=guide,
        hint_image=hint_image, compute_hint=compute_hint, hint_type=hint_type,
        hints_from_data=hints_from_data,
    )
    batch = o.num if cond is None else jax.tree.leaves(cond)[0].shape[0]
    mesh = jd_train.make_mesh()
    walked = schedule.num_timesteps if o.sampler in validation.WALKS_ALL_STEPS else o.steps
    decode = latent.decoder(config)  # a latent run's samples are decoded to images

    def make(name: str, keep_every: int, net: Any = model):
        s = config.sample
        return sampler_assembly.make_sample_fn(
            net, schedule, sampler=name, steps=o.steps, eta=o.eta,
            guidance_scale=o.guidance_scale, prediction=config.diffusion.prediction,
            shape=builders.image_shape(config, batch=batch), keep_every=keep_every,
            mesh=builders.batch_mesh(mesh, batch), spacing=s.get("spacing"),
            clip_x0=s.get("clip_x0"), variance=s.get("variance"),
            classifier_apply=guide.apply if guide else None, classifier_scale=classifier_scale,
            decode=decode, config=config,
        )

    sample_fn = make(o.sampler, max(1, walked // GIF_FRAMES))
    if run.params is not None:
        params = ema = run.params
        step = 0
    else:
        params, ema, step = restore.restore_for_sampling(config, run.workdir, model)
    params = ema if use_ema else params
    key = jax.random.key(seed)
    guide_params = guide.params if guide else None

    start = time.perf_counter()
    compiled = sample_fn.lower(params, key, cond, guide_params).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    images, trajectory = jax.block_until_ready(compiled(params, key, cond, guide_params))
    seconds = time.perf_counter() - start
    other = make(compare, 0)(params, key, cond, guide_params)[0] if compare else None
    # The base model from the same key and labels, beside the ControlNet's samples: drawn by
    # every process, like the samples (the sampler is collective over the global mesh).
    base = None
    if controlnet.enabled(config) and hints_from_data is not None:
        base = make(o.sampler, 0, net=model.unet)(model.base_params, key, cond.get("label"))[0]
    if jax.process_count() > 1:  # every process sampled its rows; process 0 writes them all
        images, trajectory, other, base = multihost_utils.process_allgather(
            (images, trajectory, other, base), tiled=True
        )
        if not distributed.is_main_process():
            return {"images": viz.to_uint8(np.asarray(images)), "seconds": seconds}

    out_dir = pathlib.Path(out or pathlib.Path(run.workdir) / f"sample_{o.sampler}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = viz.display_scale(int(config.data.image_size))
    result = write_outputs(out_dir, config, images=np.asarray(images),
                           trajectory=np.asarray(trajectory), cond=cond, ncol=ncol, scale=scale)
    result["seconds"] = seconds
    if base is not None:
        report = write_hint_report(
            out_dir, config, images=np.asarray(images), hint_maps=np.asarray(cond["hint"]),
            base_images=np.asarray(base), depth_estimator=depth_estimator,
        )
        if report is not None:
            result["report"] = report
    if compare:
        result["compare"] = write_comparison(
            out_dir, {o.sampler: np.asarray(images), compare: np.asarray(other)},
            ncol=ncol, scale=scale,
        )
    guided = (
        f", classifier_scale={classifier_scale} by {guide.workdir} (step {guide.step})"
        if guide else ""
    )
    print(
        f"sampled {batch} images with {o.sampler} ({walked} steps, guidance_scale="
        f"{o.guidance_scale}{guided}, {'EMA' if use_ema else 'raw'} params of step {step}) in "
        f"{seconds:.2f} s ({batch / seconds:.1f} images/s; compile {compile_seconds:.1f} s); "
        f"wrote {result['grid']}, {result['gif']}, {result['npz']}"
    )
    return result


def write_outputs(out_dir: pathlib.Path, config: ml_collections.ConfigDict, *,
                  images: np.ndarray, trajectory: np.ndarray, cond: Any, ncol: int,
                  scale: int) -> dict[str, Any]:
    """grid.png, denoising.gif and samples.npz (uint8 images, their labels or contexts, and
    a ControlNet's hints, shown above their samples in the grid)."""
    uint8 = viz.to_uint8(images)
    arrays = {"images": uint8}
    shown, saved_cond = images, cond
    if controlnet.enabled(config):
        arrays["hints"] = np.asarray(cond["hint"])
        shown = controlnet.hints_above(shown, arrays["hints"], ncol=ncol)
        saved_cond = cond.get("label")
    if saved_cond is not None:
        kind = "labels" if jnp.issubdtype(saved_cond.dtype, jnp.integer) else "context"
        arrays[kind] = np.asarray(saved_cond)
    result = {
        "images": uint8,
        "grid": viz.save_grid(out_dir / "grid.png", shown, ncol=ncol, scale=scale),
        "gif": viz.save_gif(out_dir / "denoising.gif", trajectory, ncol=ncol, scale=scale),
        "npz": out_dir / "samples.npz",
    }
    np.savez_compressed(result["npz"], **arrays)
    return result


def write_hint_report(out_dir: pathlib.Path, config: ml_collections.ConfigDict, *,
                      images: np.ndarray, hint_maps: np.ndarray, base_images: np.ndarray,
                      depth_estimator: str | None = None) -> Any:
    """A ControlNet run sampled from held-out hints: ``hint_report.json``, the scores of the
    samples against the hints given next to the base model's (``base_images``: the same
    key and labels, saved to ``base_samples.npz``; experiments/runs/hint_report.py). Depth
    hints are read back by the depth-estimator run ``depth_estimator`` (else
    ``controlnet.depth_estimator``); without one, None."""
    np.savez_compressed(out_dir / hint_report.BASE_SAMPLES, images=viz.to_uint8(base_images))
    estimate = info = None
    if config.controlnet.hint == "depth":
        workdir = depth_estimator or config.controlnet.get("depth_estimator")
        if not workdir:
            print("depth hints: no score without a depth estimator (--depth_estimator, a run "
                  "of configs/scenes_depth_estimator.py); see grid.png, and score samples.npz "
                  f"and {hint_report.BASE_SAMPLES} later with hint_report.rescore")
            return None
        estimate, info = depth_runs.load_estimator(workdir, image_size=config.data.image_size)
    return hint_report.write_report(
        out_dir / "hint_report.json", config, images=images, base_images=base_images,
        hint_maps=hint_maps, estimate_depth=estimate, estimator_info=info,
    )


def write_comparison(out_dir: pathlib.Path, images: dict[str, np.ndarray], *, ncol: int,
                     scale: int) -> pathlib.Path:
    """compare.png: the samplers' grids side by side (same initial noise)."""
    path = viz.save_side_by_side(out_dir / "compare.png", images, ncol=ncol, scale=scale)
    print(f"wrote {path} ({' | '.join(images)}, same initial noise)")
    return path
