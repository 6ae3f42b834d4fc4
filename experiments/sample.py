"""Samples from a trained workdir: a PNG grid, a denoising GIF and an .npz of the images.

    python -m experiments.sample --workdir runs/digits
    python -m experiments.sample --workdir runs/digits --sampler ddpm --guidance_scale 3 \\
        --labels 3,5,8 --num 10
    python -m experiments.sample --workdir runs/sprites --context 0,0,1,0,0
    python -m experiments.sample --workdir runs/digits_pd --steps 4   # a distilled student
    python -m experiments.sample --pretrained ddpm-celebahq-256 --sampler ddim --steps 50
    python -m experiments.sample --workdir runs/digits_uncond --classifier_workdir \
        runs/digits_clf --classifier_scale 3 --labels 0,1,2

The model, schedule and prediction come from the config saved with the newest checkpoint
(or, with ``--pretrained``, from a diffusers pipeline folder: experiments/finetune.py);
the flags left unset take ``config.sample``'s values. A conditional model draws one row of
``--num`` images per label (or per one-hot context); an unconditional one ``--num`` images.
Writes ``<out>/grid.png``, ``<out>/denoising.gif`` and ``<out>/samples.npz`` (uint8
``images`` (N, H, W, C) and their ``labels`` (N,) or ``context`` (N, D)).

A ControlNet run (configs/*_controlnet.py) samples from a hint: ``--hint_image PATH`` (a
hint map, or with ``--compute_hint`` an ordinary image whose hint is made) for every label
row, or ``--hints_from_data N`` (N held-out images of the run's data set, with their
labels). ``samples.npz`` then also holds ``hints`` (N, H, W, 1), ``grid.png`` shows each row
of hints above its samples, and ``--hints_from_data`` writes ``hint_report.json``: the F1 at
exact pixels between the hints of the samples and the hints they were given, next to the
base model's from the same seed and labels.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.experimental import multihost_utils

from experiments import (
    classifier_setup,
    controlnet_setup,
    distill,
    finetune,
    from_config,
    multihost,
)
from jaxdiff import distributed, viz
from jaxdiff import train as jd_train


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program (see experiments/train.py)."""
    flags.DEFINE_string("workdir", None, "A workdir written by experiments.train.")
    flags.DEFINE_string(
        "pretrained", None, "Instead of --workdir: a diffusers pipeline (or UNet) folder."
    )
    flags.DEFINE_enum(
        "sampler", None, list(from_config.SAMPLERS), "Sampler (default: config.sample.sampler)."
    )
    flags.DEFINE_integer("steps", None, "ddim/corruption steps (ddpm walks all T).")
    flags.DEFINE_float("eta", None, "DDIM eta: 0 deterministic, 1 DDPM-like noise.")
    flags.DEFINE_float("guidance_scale", None, "CFG w; 0 = plain conditional model.")
    flags.DEFINE_string("labels", "all", "Comma list of class labels, or 'all'.")
    flags.DEFINE_string(
        "context", "all", "Comma list of floats (one context vector), or 'all' (one-hot rows)."
    )
    flags.DEFINE_integer("num", None, "Images per label/context row (or in total).")
    flags.DEFINE_integer("seed", 0, "Seed of the initial noise and the sampler's noise.")
    flags.DEFINE_bool("use_ema", True, "Sample with the EMA params.")
    flags.DEFINE_string("out", None, "Output directory (default <workdir>/sample_<sampler>).")
    flags.DEFINE_enum(
        "compare",
        None,
        list(from_config.SAMPLERS),
        "Also run this sampler from the same noise and write compare.png side by side, e.g. "
        "--sampler ddpm --compare ddpm_no_noise (the seeds' right and wrong samplers).",
    )
    multihost.define_flags()
    flags.DEFINE_string(
        "classifier_workdir", None, "A noise-conditioned classifier run (configs/"
        "digits_classifier.py) whose gradient guides the samples toward --labels."
    )
    flags.DEFINE_float("classifier_scale", 1.0, "Classifier guidance scale s (eps - s sigma "
                       "grad log p(y|x_t)); with --classifier_workdir.")
    flags.DEFINE_string("hint_image", None, "ControlNet: a hint map (PNG/JPEG/.npy, any size).")
    flags.DEFINE_bool("compute_hint", False, "ControlNet: make the hint of a --hint_image photo.")
    flags.DEFINE_string("hint_type", None, "ControlNet: the hint type of --hint_image (checked).")
    flags.DEFINE_integer("hints_from_data", None, "ControlNet: sample from N held-out hints.")


GIF_FRAMES = 40


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
) -> dict[str, Any]:
    """Samples from ``workdir``'s newest checkpoint and writes grid, GIF and npz to ``out``.

    With ``compare`` (another sampler's name), also runs that sampler with the same key, so
    from the same initial noise, and writes both grids side by side to ``compare.png``.

    With ``classifier_workdir``, classifier guidance of scale ``classifier_scale`` (on top of
    CFG for a conditional model) steers each image toward its label; an unconditional model
    then draws ``num`` images per label too.

    Returns {'images': uint8 (N, H, W, C), 'grid', 'gif', 'npz': paths, 'seconds': float,
    and 'compare': path when asked}.
    """
    if pretrained:
        from configs import common

        config, pretrained_params = finetune.pretrained_run(pretrained, common.base_config())
        workdir = workdir or f"pretrained_{pathlib.Path(pretrained).resolve().name}"
    else:
        # A distillation workdir names its students by step count (experiments/distill.py).
        workdir, steps = distill.student_for_sampling(workdir, steps)
        config = from_config.load_run_config(workdir)
    s = config.sample
    sampler = sampler or s.sampler
    steps = int(steps if steps is not None else s.steps)
    eta = float(eta if eta is not None else s.eta)
    guidance_scale = float(guidance_scale if guidance_scale is not None else s.guidance_scale)
    num = int(num if num is not None else s.num)
    if num < 1:
        raise from_config.ConfigError(f"--num must be >= 1, got {num}")
    for name in (sampler, compare) if compare else (sampler,):
        from_config.validate_sampling(
            config, sampler=name, steps=steps, eta=eta, guidance_scale=guidance_scale
        )

    guide = None
    if classifier_workdir:
        classifier_setup.validate_guidance(config, sampler=sampler, scale=classifier_scale)
        guide = classifier_setup.load_guide(classifier_workdir, config)
    controlled = controlnet_setup.enabled(config)
    if controlled:
        model = controlnet_setup.build_model(config, workdir, for_training=False)
    else:
        model = from_config.build_model(config)
    schedule = from_config.build_schedule(config)
    cond, ncol = _conds(
        model, labels=labels, context=context, num=num,
        guide_classes=guide.num_classes if guide else None,
    )
    if controlled:
        cond, _ = controlnet_setup.sample_conds(
            config, cond, num=num, hint_image=hint_image, compute_hint=compute_hint,
            hint_type=hint_type, hints_from_data=hints_from_data,
        )
        ncol = ncol if hints_from_data is None else from_config.grid_columns(len(cond["hint"]), 0)
    batch = num if cond is None else jax.tree.leaves(cond)[0].shape[0]
    mesh = jd_train.make_mesh()
    walked = schedule.num_timesteps if sampler in ("ddpm", "ddpm_no_noise") else steps

    def make(name: str, keep_every: int, net: Any = model):
        return from_config.make_sample_fn(
            net,
            schedule,
            sampler=name,
            steps=steps,
            eta=eta,
            guidance_scale=guidance_scale,
            prediction=config.diffusion.prediction,
            shape=from_config.image_shape(config, batch=batch),
            keep_every=keep_every,
            mesh=mesh if batch % mesh.size == 0 else None,
            spacing=s.get("spacing"),
            clip_x0=s.get("clip_x0"),
            variance=s.get("variance"),
            classifier_apply=guide.apply if guide else None,
            classifier_scale=classifier_scale,
        )

    sample_fn = make(sampler, max(1, walked // GIF_FRAMES))
    if pretrained:
        params = ema = pretrained_params
        step = 0
    else:
        params, ema, step = from_config.restore_for_sampling(config, workdir, model)
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
    if jax.process_count() > 1:  # every process sampled its rows; process 0 writes them all
        images, trajectory, other = multihost_utils.process_allgather(
            (images, trajectory, other), tiled=True
        )
        if not distributed.is_main_process():
            return {"images": viz.to_uint8(np.asarray(images)), "seconds": seconds}

    out_dir = pathlib.Path(out or pathlib.Path(workdir) / f"sample_{sampler}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = viz.display_scale(int(config.data.image_size))
    uint8 = viz.to_uint8(np.asarray(images))
    arrays = {"images": uint8}
    shown, saved_cond = np.asarray(images), cond
    if controlled:
        arrays["hints"] = np.asarray(cond["hint"])
        shown = controlnet_setup.hints_above(shown, arrays["hints"], ncol=ncol)
        saved_cond = cond.get("label")
    if saved_cond is not None:
        kind = "labels" if jnp.issubdtype(saved_cond.dtype, jnp.integer) else "context"
        arrays[kind] = np.asarray(saved_cond)
    result = {
        "images": uint8,
        "grid": viz.save_grid(out_dir / "grid.png", shown, ncol=ncol, scale=scale),
        "gif": viz.save_gif(
            out_dir / "denoising.gif", np.asarray(trajectory), ncol=ncol, scale=scale
        ),
        "npz": out_dir / "samples.npz",
        "seconds": seconds,
    }
    np.savez_compressed(result["npz"], **arrays)
    if controlled and hints_from_data is not None and config.controlnet.hint == "depth":
        print("depth hints: no agreement score (no depth estimator runs here to read a "
              "sample's depth); see grid.png")
    elif controlled and hints_from_data is not None:
        # The base model alone from the same key and labels: what the hints add.
        base_images, _ = make(sampler, 0, net=model.unet)(model.base_params, key, saved_cond)
        result["report"] = controlnet_setup.write_agreement_report(
            out_dir / "hint_report.json", config, images=np.asarray(images),
            base_images=np.asarray(base_images), hint_maps=arrays["hints"],
        )
    if compare:
        result["compare"] = viz.save_side_by_side(
            out_dir / "compare.png",
            {sampler: np.asarray(images), compare: np.asarray(other)},
            ncol=ncol,
            scale=scale,
        )
        print(f"wrote {result['compare']} ({sampler} | {compare}, same initial noise)")
    guided = (
        f", classifier_scale={classifier_scale} by {guide.workdir} (step {guide.step})"
        if guide else ""
    )
    print(
        f"sampled {batch} images with {sampler} ({walked} steps, guidance_scale="
        f"{guidance_scale}{guided}, {'EMA' if use_ema else 'raw'} params of step {step}) in "
        f"{seconds:.2f} s ({batch / seconds:.1f} images/s; compile {compile_seconds:.1f} s); "
        f"wrote {result['grid']}, {result['gif']}, {result['npz']}"
    )
    return result


def _conds(
    model, *, labels: str, context: str, num: int, guide_classes: int | None = None
) -> tuple[Any, int]:
    """(cond, ncol): ``num`` images per label / context row; ncol=num keeps one per row.
    ``guide_classes``: a guiding classifier's classes, the labels of an unconditional model."""
    num_classes, context_dim = from_config.cond_spec(model)
    if guide_classes and not num_classes and not context_dim:
        num_classes = guide_classes
        if labels == "all":
            labels = ",".join(map(str, range(guide_classes)))
    if context != "all" and context_dim:
        vector = _floats(context, "--context")
        if len(vector) != context_dim:
            raise from_config.ConfigError(
                f"--context has {len(vector)} values; the model takes {context_dim}"
            )
        return jnp.tile(jnp.asarray(vector, jnp.float32), (num, 1)), num
    if labels != "all" and not num_classes:
        raise from_config.ConfigError(
            "--labels needs a class-conditional model (num_classes) or --classifier_workdir"
        )
    if context != "all" and not context_dim:
        raise from_config.ConfigError("--context needs a model with a context input")
    if labels == "all" or not num_classes:
        cond, rows = from_config.grid_conds(model, per_row=num)
        return cond, (num if rows else from_config.grid_columns(num, 0))
    try:
        chosen = [int(x) for x in labels.split(",") if x.strip()]
    except ValueError:
        raise from_config.ConfigError(
            f"--labels must be a comma list of integers or 'all', got {labels!r}"
        ) from None
    if guide_classes:
        num_classes = min(num_classes, guide_classes)
    bad = [x for x in chosen if not 0 <= x < num_classes]
    if bad:
        raise from_config.ConfigError(f"--labels {bad} are not in [0, {num_classes})")
    return jnp.repeat(jnp.asarray(chosen, jnp.int32), num), num


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise from_config.ConfigError(
            f"{flag} must be a comma list of numbers or 'all', got {text!r}"
        ) from None


def main(argv: list[str]) -> None:
    from_config.start_cli(argv)
    with from_config.exit_on_user_error():
        multihost.initialize_from_flags()
        f = flags.FLAGS
        if f.workdir is None and f.pretrained is None:
            raise from_config.ConfigError(
                "give --workdir (the directory experiments.train wrote) or --pretrained "
                "(a diffusers pipeline folder)"
            )
        sample(
            f.workdir,
            sampler=f.sampler,
            steps=f.steps,
            eta=f.eta,
            guidance_scale=f.guidance_scale,
            labels=f.labels,
            context=f.context,
            num=f.num,
            seed=f.seed,
            use_ema=f.use_ema,
            out=f.out,
            compare=f.compare,
            pretrained=f.pretrained,
            classifier_workdir=f.classifier_workdir,
            classifier_scale=f.classifier_scale,
            hint_image=f.hint_image,
            compute_hint=f.compute_hint,
            hint_type=f.hint_type,
            hints_from_data=f.hints_from_data,
        )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=from_config.parse_flags)
