"""Sample quality of a trained run: classifier-feature FID and class-conditional accuracy.

    python -m experiments.evaluate --workdir runs/digits          # quick: 2 settings
    python -m experiments.evaluate --workdir runs/digits --full   # the whole sweep
    python -m experiments.evaluate --workdir runs/digits --samplers ddim --steps 10,50 \\
        --guidance 0,3 --num 400
    python -m experiments.evaluate --workdir runs/digits_uncond --samplers ddim --steps 50 \
        --guidance 0 --classifier_workdir runs/digits_clf --classifier_scales 0,1,3,10
    python -m experiments.evaluate --workdir runs/cifar10 --inception_weights \
        pt_inception-2015-12-05-6726825d.pth --ref_stats cifar10_train.npz --num 50000

With ``--inception_weights`` (or ``--fid inception``) the FID is pytorch-fid's, comparable
with papers, with precision and recall: ``experiments.runs.inception_eval``, docs/fid.md.
The rest of this page is the default classifier-feature evaluation.

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

import pathlib

from absl import flags

from experiments.runtime import errors
from experiments.runtime.flag_defs import define

# Module level imports nothing that registers flags (jaxdiff, orbax, grain, absl.logging,
# ml_collections.config_flags do): define_flags() and main() import what they use.


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program (experiments/runtime/flag_defs.py)."""
    s, i, f, b = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float, flags.DEFINE_bool
    from experiments.runtime import multihost

    listed = flags.DEFINE_list
    define(s, "workdir", None, "A workdir written by experiments.train.")
    multihost.define_flags()
    define(b, "full", False, "Sweep every sampler, step count and scale of "
           "FULL_SWEEP instead of the run's own sampler at 2 scales.")
    define(listed, "samplers", None, "Samplers to sweep [config.sample.sampler].")
    define(listed, "steps", None, "DDIM steps to sweep [config.sample.steps].")
    define(listed, "guidance", None, "CFG scales w to sweep "
           "[0 and config.sample.guidance_scale].")
    define(i, "num", 1000, "Samples per setting (capped at held-out size / 2).")
    define(i, "batch_size", 250, "Samples drawn per compiled sampler call.")
    define(i, "seed", 0, "Seed of the samples, the split and the classifier.")
    define(s, "split", None, "Data split of the real images (default: the run's).")
    define(i, "max_real", 10_000, "Real images read at most.")
    define(f, "holdout", 0.5, "Fraction of real images held out of classifier "
           "training; they are the FID reference.")
    define(i, "classifier_steps", 1000, "Classifier training steps.")
    define(s, "cache_dir", None, "Feature-classifier cache (default "
           "<workdir>/feature_classifier).")
    define(b, "use_ema", True, "Sample with the EMA params.")
    define(flags.DEFINE_enum, "spacing", None, ["linspace", "trailing", "leading"],
           "Timestep grid of ddim and dpm_solver_pp (default: config.sample.spacing, else each "
           "sampler's own).")
    define(s, "classifier_workdir", None,
           "A noise-conditioned classifier run that guides the samples.")
    define(listed, "classifier_scales", ["0"],
           "Classifier-guidance scales s (with --classifier_workdir).")
    define(flags.DEFINE_enum, "fid", None, ["classifier", "inception"], "Feature space of the "
           "FID: the run's own classifier, or pytorch-fid's Inception-V3 (docs/fid.md) "
           "[inception with --inception_weights, else classifier].")
    define(s, "inception_weights", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
    define(s, "ref_stats", None, "Reference mu/sigma .npz (pytorch-fid's format) for "
           "--fid inception [the run's real images].")
    define(s, "save_ref_stats", None, "Write the Inception statistics of the run's real "
           "images (up to --max_real) to this .npz and stop.")
    define(i, "fid_seeds", 1, "Inception FID on K disjoint seed blocks: mean and std.")
    define(i, "feature_batch", 50, "Images per Inception call.")


def main(argv: list[str]) -> None:
    from experiments.runs import evaluation
    from experiments.runtime import multihost
    from jaxdiff import distributed

    errors.start_cli(argv)
    f = flags.FLAGS
    with errors.exit_on_user_error():
        multihost.initialize_from_flags()
        if f.workdir is None:
            raise errors.ConfigError("give --workdir, the directory experiments.train wrote")
        try:
            steps = None if f.steps is None else [int(s) for s in f.steps]
            guidance = None if f.guidance is None else [float(w) for w in f.guidance]
            classifier_scales = [float(s) for s in f.classifier_scales]
        except ValueError:
            raise errors.ConfigError(
                "--steps takes integers, --guidance and --classifier_scales numbers, "
                "comma-separated"
            ) from None
        if f.fid == "inception" or (f.fid is None and f.inception_weights):
            from experiments.runs import inception_eval

            if not f.inception_weights:
                raise errors.ConfigError("--fid inception needs --inception_weights (docs/fid.md)")
            if f.save_ref_stats:
                inception_eval.save_reference_stats(
                    f.workdir, f.save_ref_stats, inception_weights=f.inception_weights,
                    split=f.split, max_real=f.max_real, seed=f.seed,
                    feature_batch=f.feature_batch)
                return
            if f.classifier_workdir:
                raise errors.ConfigError("--classifier_workdir is not supported with --fid "
                                         "inception")
            inception_eval.evaluate_inception(
                f.workdir, inception_weights=f.inception_weights, ref_stats=f.ref_stats,
                samplers=f.samplers, steps=steps, guidance=guidance, full=f.full, num=f.num,
                batch_size=f.batch_size, seed=f.seed, split=f.split, max_real=f.max_real,
                use_ema=f.use_ema, spacing=f.spacing, fid_seeds=f.fid_seeds,
                feature_batch=f.feature_batch)
            if distributed.is_main_process():
                print((pathlib.Path(f.workdir) / "eval_inception.md").read_text())
            return
        evaluation.evaluate(
            f.workdir, samplers=f.samplers, steps=steps, guidance=guidance,
            full=f.full,
            num=f.num, batch_size=f.batch_size, seed=f.seed, split=f.split,
            max_real=f.max_real, holdout=f.holdout,
            classifier_steps=f.classifier_steps, cache_dir=f.cache_dir,
            use_ema=f.use_ema, spacing=f.spacing,
            classifier_workdir=f.classifier_workdir, classifier_scales=classifier_scales,
        )
        if distributed.is_main_process():
            print((pathlib.Path(f.workdir) / "eval.md").read_text())


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main, flags_parser=errors.parse_flags)
