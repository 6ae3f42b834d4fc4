"""Samples from a trained workdir: a PNG grid, a denoising GIF and an .npz of the images.

    python -m experiments.sample --workdir runs/digits
    python -m experiments.sample --workdir runs/digits --sampler ddpm --guidance_scale 3 \\
        --labels 3,5,8 --num 10
    python -m experiments.sample --workdir runs/sprites --context 0,0,1,0,0
    python -m experiments.sample --workdir runs/digits_pd --steps 4   # a distilled student
    python -m experiments.sample --pretrained ddpm-celebahq-256 --sampler ddim --steps 50
    python -m experiments.sample --pretrained DiT-XL-2-256 --labels 207,360,387 \
        --guidance_scale 4
    python -m experiments.sample --workdir runs/digits_uncond --classifier_workdir \
        runs/digits_clf --classifier_scale 3 --labels 0,1,2

The model, schedule and prediction come from the config saved with the newest checkpoint
(or, with ``--pretrained``, from a diffusers pipeline folder: experiments/runs/finetune.py;
a DiTPipeline folder samples latents and decodes them: experiments/runs/pipeline_sampling.py);
the flags left unset take ``config.sample``'s values. A conditional model draws one row of
``--num`` images per label (or per one-hot context); an unconditional one ``--num`` images.
Writes ``<out>/grid.png``, ``<out>/denoising.gif`` and ``<out>/samples.npz`` (uint8
``images`` (N, H, W, C) and their ``labels`` (N,) or ``context`` (N, D)).

A ControlNet run (configs/*_controlnet.py) samples from a hint: ``--hint_image PATH`` (a
hint map, or with ``--compute_hint`` an ordinary image whose hint is made) for every label
row, or ``--hints_from_data N`` (N held-out images of the run's data set, with their
labels). ``samples.npz`` then also holds ``hints`` (N, H, W, 1), ``grid.png`` shows each row
of hints above its samples, and ``--hints_from_data`` writes ``hint_report.json``: how
closely the samples follow the hints they were given (a score per hint type, see
experiments/runs/hint_report.py; depth hints are read back by ``--depth_estimator``), next
to the base model's from the same seed and labels.
"""

from __future__ import annotations

from absl import flags

from experiments.runtime import errors
from experiments.runtime.flag_defs import define

# Module level imports nothing that registers flags (jaxdiff, orbax, grain, absl.logging,
# ml_collections.config_flags do): define_flags() and main() import what they use.


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program (experiments/runtime/flag_defs.py)."""
    from experiments.runs import validation
    from experiments.runtime import multihost

    s, i, f, b = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float, flags.DEFINE_bool
    define(s, "workdir", None, "A workdir written by experiments.train.")
    define(s, "pretrained", None, "Instead of --workdir: a diffusers pipeline (or UNet) folder.")
    define(flags.DEFINE_enum, "sampler", None, list(validation.SAMPLERS),
           "Sampler (default: config.sample.sampler).")
    define(i, "steps", None, "ddim/corruption steps (ddpm walks all T).")
    define(f, "eta", None, "DDIM eta: 0 deterministic, 1 DDPM-like noise.")
    define(f, "guidance_scale", None, "CFG w; 0 = plain conditional model.")
    define(s, "labels", "all", "Comma list of class labels, or 'all'.")
    define(s, "context", "all",
           "Comma list of floats (one context vector), or 'all' (one-hot rows).")
    define(i, "num", None, "Images per label/context row (or in total).")
    define(i, "seed", 0, "Seed of the initial noise and the sampler's noise.")
    define(b, "use_ema", True, "Sample with the EMA params.")
    define(s, "out", None, "Output directory (default <workdir>/sample_<sampler>).")
    define(
        flags.DEFINE_enum,
        "compare",
        None,
        list(validation.SAMPLERS),
        "Also run this sampler from the same noise and write compare.png side by side, e.g. "
        "--sampler ddpm --compare ddpm_no_noise (the seeds' right and wrong samplers).",
    )
    multihost.define_flags()
    define(s, "classifier_workdir", None, "A noise-conditioned classifier run (configs/"
           "digits_classifier.py) whose gradient guides the samples toward --labels.")
    define(f, "classifier_scale", 1.0, "Classifier guidance scale s (eps - s sigma "
           "grad log p(y|x_t)); with --classifier_workdir.")
    define(s, "hint_image", None, "ControlNet: a hint map (PNG/JPEG/.npy, any size).")
    define(b, "compute_hint", False, "ControlNet: make the hint of a --hint_image photo.")
    define(s, "hint_type", None, "ControlNet: the hint type of --hint_image (checked).")
    define(i, "hints_from_data", None, "ControlNet: sample from N held-out hints.")
    define(s, "depth_estimator", None, "ControlNet, depth hints: the depth-estimator run "
           "(configs/scenes_depth_estimator.py) that scores --hints_from_data samples.")


def main(argv: list[str]) -> None:
    from experiments.runs import sampling
    from experiments.runtime import multihost

    errors.start_cli(argv)
    with errors.exit_on_user_error():
        multihost.initialize_from_flags()
        f = flags.FLAGS
        if f.workdir is None and f.pretrained is None:
            raise errors.ConfigError(
                "give --workdir (the directory experiments.train wrote) or --pretrained "
                "(a diffusers pipeline folder)"
            )
        sampling.sample(
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
            depth_estimator=f.depth_estimator,
        )


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=errors.parse_flags)
