"""Config -> objects for the noise-conditioned classifier of classifier guidance.

Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4: a classifier p_phi(y | x_t, t)
trained on the noisy images of one diffusion schedule steers that schedule's sampler with
its gradient (``jaxdiff.guidance.classifier_guidance``). A classifier run is an ordinary
``experiments.train`` run whose config has ``model.name = "classifier"`` and
``diffusion.loss = "noisy_classifier"`` (configs/digits_classifier.py); ``kinds``
hands such configs to this module. Instead of sample grids, training writes the accuracy of
the EMA classifier by noise level (``accuracy_by_noise.png`` / ``.json``).

Guiding a run with it (experiments.sample / evaluate ``--classifier_workdir``) needs the
classifier's schedule to be the diffusion run's: ``load_guide`` says how they differ if not.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.runs import builders, restore, training_data
from experiments.runtime.errors import ConfigError
from jaxdiff import schedules
from jaxdiff.models.classifier import Classifier

# The config fields that define the forward process q(x_t | x_0) a classifier was trained on.
SCHEDULE_FIELDS = ("schedule", "num_timesteps", "beta_start", "beta_end")


def is_classifier(config: ml_collections.ConfigDict) -> bool:
    return config.model.name == "classifier"


def validate(config: ml_collections.ConfigDict) -> None:
    """The classifier-specific config checks (validation.validate_config runs the rest)."""
    if is_classifier(config) != (config.diffusion.loss == "noisy_classifier"):
        raise ConfigError(
            f"model.name={config.model.name!r} and diffusion.loss={config.diffusion.loss!r} "
            "do not go together: the noisy_classifier loss trains model.name='classifier' only"
        )
    if is_classifier(config) and int(config.model.get("num_classes", 0) or 0) < 2:
        raise ConfigError(
            f"model.num_classes must be >= 2 for a classifier, got {config.model.num_classes}"
        )


def build_model(config: ml_collections.ConfigDict) -> Classifier:
    """The Classifier of ``config.model``, conditioned on the run's T timesteps."""
    fields = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    T = int(config.diffusion.num_timesteps)
    if fields.setdefault("num_timesteps", T) != T:
        raise ConfigError(
            f"model.num_timesteps={fields['num_timesteps']} differs from "
            f"diffusion.num_timesteps={T}; leave model.num_timesteps unset"
        )
    try:
        model = Classifier(**{k: tuple(v) if isinstance(v, list) else v for k, v in
                              with_dtype(fields).items()})
        x = jax.ShapeDtypeStruct(builders.image_shape(config, batch=1), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.int32)
        jax.eval_shape(model.init, jax.random.key(0), x, t)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.model (classifier): {e}") from None
    return model


def with_dtype(fields: dict[str, Any]) -> dict[str, Any]:
    from jaxdiff.models import DTYPES

    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = DTYPES[fields["dtype"]]
    return fields


# --------------------------------------------------------------------------- accuracy by noise


def accuracy_by_timestep(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    schedule: schedules.Schedule,
    images: jax.Array,
    labels: jax.Array,
    *,
    timesteps: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """Accuracy (L,) of the classifier on x_t = q_sample(images, t) for each t in
    ``timesteps`` (L,), the same noise for every t. images (N, H, W, C), labels (N,)."""
    noise = jax.random.normal(key, images.shape, jnp.float32)

    def one(t):
        t_batch = jnp.full((images.shape[0],), t, jnp.int32)
        x_t = schedules.q_sample(schedule, images, t_batch, noise)
        logits = apply_fn({"params": params}, x_t, t_batch)
        return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))

    return jax.lax.map(one, timesteps)


class NoiseLevelAccuracy:
    """experiments.train's preview for a classifier run: accuracy of the EMA params by noise
    level on a fixed set of ``noise_eval.num_images`` images (``noise_eval.split``; the
    digits have one split, so there they are training images with fresh noise), at
    ``noise_eval.levels`` timesteps from 0 to T-1. Writes ``accuracy_by_noise.json`` (one
    entry per preview step) and ``accuracy_by_noise.png`` (a curve per step), and
    TensorBoard scalars ``noise_accuracy/t_<t>``."""

    def __init__(self, config, model, schedule, workdir, key, mesh):
        del mesh  # a few hundred small images: one device is plenty
        e = config.noise_eval
        eval_config = ml_collections.ConfigDict(config.to_dict())
        eval_config.data.split = e.split or config.data.split
        iterator = training_data.build_data(eval_config)
        batches = [next(iterator) for _ in range(-(-int(e.num_images) // config.data.batch_size))]
        self.images = jnp.concatenate([b["image"] for b in batches])[: int(e.num_images)]
        self.labels = jnp.concatenate([b["label"] for b in batches])[: int(e.num_images)]
        T = schedule.num_timesteps
        self.timesteps = np.unique(np.round(np.linspace(0, T - 1, int(e.levels))).astype(int))
        self.alpha_bars = np.asarray(schedule.alpha_bars)[self.timesteps]
        self.accuracy = jax.jit(
            lambda params: accuracy_by_timestep(
                model.apply, params, schedule, self.images, self.labels,
                timesteps=jnp.asarray(self.timesteps, jnp.int32), key=key,
            )
        )
        self.json_path = pathlib.Path(workdir) / "accuracy_by_noise.json"
        self.png_path = self.json_path.with_suffix(".png")

    def write(self, step: int, params: Any, writer: Any) -> None:
        accuracy = self.accuracy(params)  # every process computes (collective)
        if writer is None:  # not the main process
            return
        accuracy = [float(a) for a in np.asarray(accuracy)]
        history = json.loads(self.json_path.read_text()) if self.json_path.exists() else []
        # Entries after a resumed step came from steps that are now run again.
        history = [h for h in history if h["step"] < step]
        history.append({"step": step, "timesteps": self.timesteps.tolist(),
                        "alpha_bars": self.alpha_bars.tolist(), "accuracy": accuracy,
                        "num_images": len(self.labels)})
        self.json_path.write_text(json.dumps(history, indent=1) + "\n")
        for t, a in zip(self.timesteps, accuracy, strict=True):
            writer.add_scalar(f"noise_accuracy/t_{int(t):04d}", a, step)
        plot_accuracy_by_noise(self.png_path, history)


def plot_accuracy_by_noise(path: pathlib.Path, history: list[dict[str, Any]]) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)  # files only: no backend switch, no display
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    for i, h in enumerate(history):
        ax.plot(h["timesteps"], h["accuracy"], marker="o", color=cmap(i / max(len(history) - 1, 1)),
                label=f"step {h['step']}")
    ax.set_xlabel("timestep t (more noise ->)")
    ax.set_ylabel("accuracy on x_t")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.1, color="gray", linestyle=":", label="chance (10 classes)")
    ax.set_title("noise-conditioned classifier: accuracy by noise level")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- guiding a run


def schedule_difference(
    diffusion_config: ml_collections.ConfigDict, classifier_config: ml_collections.ConfigDict
) -> str | None:
    """None when both runs have the same forward process, else 'diffusion.<field>: <a>
    (diffusion run) != <b> (classifier run); ...'. beta_start/end count for linear only."""
    a, b = diffusion_config.diffusion, classifier_config.diffusion
    fields = SCHEDULE_FIELDS if a.schedule == b.schedule == "linear" else SCHEDULE_FIELDS[:2]
    diffs = [
        f"diffusion.{f}: {a.get(f)!r} (diffusion run) != {b.get(f)!r} (classifier run)"
        for f in fields
        if a.get(f) != b.get(f)
    ]
    return "; ".join(diffs) or None


def validate_guidance(config: ml_collections.ConfigDict, *, sampler: str, scale: float) -> None:
    """Checks classifier-guidance options against the diffusion run's config."""
    if scale < 0:
        raise ConfigError(f"classifier_scale must be >= 0, got {scale}")
    if sampler == "corruption" or config.diffusion.loss != "denoising":
        raise ConfigError(
            "classifier guidance needs a denoising diffusion run and a ddpm/ddim sampler (it "
            f"shifts eps); got diffusion.loss={config.diffusion.loss!r}, sampler {sampler!r}"
        )


@dataclasses.dataclass(frozen=True)
class Guide:
    """A restored guiding classifier: ``apply(params, x_t, t) -> logits`` and its params."""

    apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
    params: Any
    num_classes: int
    step: int
    workdir: str


def load_guide(classifier_workdir: str, diffusion_config: ml_collections.ConfigDict) -> Guide:
    """The EMA classifier of ``classifier_workdir``'s newest checkpoint, after checking that
    it is a classifier run trained under ``diffusion_config``'s schedule (ConfigError with
    the differing fields otherwise)."""
    config = restore.load_run_config(classifier_workdir)
    if not is_classifier(config):
        raise ConfigError(
            f"{classifier_workdir} is not a classifier run (model.name={config.model.name!r}); "
            "train one with --config configs/digits_classifier.py"
        )
    diff = schedule_difference(diffusion_config, config)
    if diff:
        raise ConfigError(
            f"the classifier in {classifier_workdir} was trained on another noise schedule "
            f"than the diffusion run: {diff}; train the classifier with the run's schedule "
            "(--config.diffusion.<field>=<value>)"
        )
    ours = builders.build_schedule(diffusion_config)
    theirs = builders.build_schedule(config)
    if not np.allclose(ours.alpha_bars, theirs.alpha_bars, rtol=1e-6, atol=1e-7):
        raise ConfigError(
            f"the classifier in {classifier_workdir} has other alpha_bars than the diffusion run"
        )
    model = build_model(config)
    _, ema_params, step = restore.restore_for_sampling(config, classifier_workdir, model)
    return Guide(
        apply=lambda params, x_t, t: model.apply({"params": params}, x_t, t),
        params=ema_params,
        num_classes=int(model.num_classes),
        step=int(step),
        workdir=str(classifier_workdir),
    )
