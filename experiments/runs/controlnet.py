"""From a ControlNet config (``config.controlnet``) to the objects of a run: the frozen base,
the controlled model, hint data, the hinted loss and sampling conditions (the scores of
samples against their hints: experiments/runs/hint_report.py).

``experiments.runs.kinds`` hands a config to this module when ``enabled(config)``.
Training copies the base UNet's EMA params into ``<workdir>/base_params.msgpack`` at its
first start, so a run keeps working however its base workdir changes later; sampling
reads that copy.
"""

from __future__ import annotations

import pathlib
from typing import Any

import cv2
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.runs import builders, restore
from experiments.runtime.errors import ConfigError
from jaxdiff import checkpoint, data, hints, sources
from jaxdiff.models.controlnet import ControlledUNet, ControlNet

BASE_PARAMS = "base_params.msgpack"
HINT_DEVICES = ("data", "device")
BINARY_HINTS = ("canny", "hough", "scribble")
SEGMENTATION_REGIONS = 3  # hints.segmentation's default


def enabled(config: ml_collections.ConfigDict) -> bool:
    return "controlnet" in config


def validate(config: ml_collections.ConfigDict) -> None:
    c = config.controlnet
    if c.hint not in hints.HINT_TYPES:
        raise ConfigError(
            f"controlnet.hint must be one of {hints.HINT_TYPES}, got {c.hint!r}"
        )
    if c.hint_device not in HINT_DEVICES:
        raise ConfigError(
            f"controlnet.hint_device must be one of {HINT_DEVICES}, got {c.hint_device!r}"
        )
    if c.hint_device == "device" and c.hint != "canny":
        raise ConfigError(
            "controlnet.hint_device='device' makes Canny hints in JAX; use hint_device='data' "
            f"for {c.hint!r} hints"
        )
    if (c.hint == "depth") != (config.data.source == "scenes"):
        raise ConfigError(
            "depth hints come with the data: use controlnet.hint='depth' with "
            "data.source='scenes' (synthetic scenes with exact depth), and image hints with "
            f"other sources; got hint={c.hint!r}, data.source={config.data.source!r}"
        )


def hint_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword options of the run's hint function (Canny thresholds for edge-like hints)."""
    c = config.controlnet
    if c.hint in ("canny", "hough", "scribble"):
        return {"low": float(c.canny_low), "high": float(c.canny_high)}
    return {}


def make_hints(config: ml_collections.ConfigDict, images: Any, *, seed: int = 0) -> np.ndarray:
    """The run's hint maps of images (N, H, W, C) uint8 or in [-1, 1]: (N, H, W, 1)."""
    return hints.make(images, hint=config.controlnet.hint, seed=seed, **hint_options(config))


# --------------------------------------------------------------------------- the base


def load_base(config: ml_collections.ConfigDict) -> tuple[Any, Any, int]:
    """(UNet, EMA params, step) of ``controlnet.base_workdir``, checked against config.model."""
    base_workdir = config.controlnet.get("base_workdir")
    if not base_workdir:
        raise ConfigError(
            "set --config.controlnet.base_workdir to the trained base run (e.g. runs/digits)"
        )
    try:
        saved = restore.load_run_config(base_workdir)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"controlnet.base_workdir={base_workdir} is missing or unreadable: {e}"
        ) from None
    wanted = checkpoint.config_to_dict(config)
    have = checkpoint.config_to_dict(saved)
    diff = checkpoint.config_diff(
        {k: have.get(k) for k in ("model", "diffusion")},
        {k: wanted.get(k) for k in ("model", "diffusion")},
    )
    diff += [
        f"data.{k}: {have['data'].get(k)!r} (base) != {wanted['data'].get(k)!r} (now)"
        for k in ("image_size", "channels")
        if have["data"].get(k) != wanted["data"].get(k)
    ]
    if diff:
        raise ConfigError(
            f"the base in {base_workdir} does not match this config's architecture: "
            + "; ".join(d.replace("(saved)", "(base)") for d in diff)
        )
    unet = builders.build_model(saved)
    _, ema, step = restore.restore_for_sampling(saved, base_workdir, unet)
    return unet, ema, step


def build_model(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, for_training: bool
) -> ControlledUNet:
    """The controlled model; its base params come from ``<workdir>/base_params.msgpack``,
    written from ``controlnet.base_workdir`` when training starts without one."""
    unet = builders.build_model(config)
    path = pathlib.Path(workdir) / BASE_PARAMS
    if path.exists():
        x = jnp.zeros(builders.image_shape(config, batch=1))
        target = jax.eval_shape(unet.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32))
        base_params = flax.serialization.from_bytes(target["params"], path.read_bytes())
    elif for_training:
        _, base_params, step = load_base(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(flax.serialization.to_bytes(jax.device_get(base_params)))
        print(f"ControlNet base: EMA params of step {step} of {config.controlnet.base_workdir}")
    else:
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a ControlNet run")
    c = config.controlnet
    return ControlledUNet(
        unet,
        ControlNet.from_unet(unet, hint_channels=tuple(c.hint_channels)),
        jax.device_put(base_params),
        conditioning_scale=float(c.conditioning_scale),
    )


def build_loss(config: ml_collections.ConfigDict, model: ControlledUNet, schedule: Any) -> Any:
    """The denoising loss of the controlled model; with ``hint_device='device'`` the batch's
    Canny hints are made by ``hints.canny_jax`` inside the jitted train step."""
    loss_fn = builders.build_loss(config, model, schedule)
    if config.controlnet.hint_device != "device":
        return loss_fn
    options = hint_options(config)

    def hinted(params, batch, key):
        return loss_fn(params, {**batch, "hint": hints.canny_jax(batch["image"], **options)}, key)

    return hinted


# --------------------------------------------------------------------------- data


class HintSource:
    """Records of ``source`` (``indices`` of it) resized/padded as the pipeline does, with
    the run's hint made from the final image (OpenCV, in the grain pipeline's workers)."""

    def __init__(self, config: ml_collections.ConfigDict, source: Any, indices: range):
        self.config, self.source, self.indices = config, source, indices
        self.with_hints = config.controlnet.hint_device == "data" and "hint" not in source[0]
        resize_to = config.data.get("resize_to")
        size = int(resize_to or config.data.image_size)
        self.image_size = (size, size)
        self.pad_to = (int(config.data.image_size),) * 2 if resize_to else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = data.prepare_record(
            self.source[self.indices[index]], image_size=self.image_size, pad_to=self.pad_to
        )
        if self.with_hints:
            seed = int(self.config.controlnet.seed) * 1_000_003 + self.indices[index]
            record["hint"] = make_hints(self.config, record["image"][None], seed=seed)[0]
        return record


def heldout_split(config: ml_collections.ConfigDict) -> tuple[Any, range, range]:
    source = sources.make_source(config.data)
    heldout = int(config.controlnet.heldout)
    if not 0 < heldout < len(source):
        raise ConfigError(
            f"controlnet.heldout={heldout} must be in (0, {len(source)}) for this data set"
        )
    return source, range(len(source) - heldout), range(len(source) - heldout, len(source))


def build_data(config: ml_collections.ConfigDict, *, start_batch: int = 0) -> Any:
    """Training batches with 'hint' (but for hint_device='device'), the held-out records
    (the last ``controlnet.heldout`` of the source) left out; the first is global batch
    ``start_batch`` (a resumed run's step)."""
    source, train, _ = heldout_split(config)
    return data.make_pipeline(
        HintSource(config, source, train),
        batch_size=int(config.data.batch_size),
        seed=int(config.train.seed),
        worker_count=int(config.data.get("worker_count", 0)),
        start_batch=start_batch,
    )


def heldout_batch(config: ml_collections.ConfigDict, num: int) -> dict[str, np.ndarray]:
    """The first ``num`` held-out records: 'image' in [-1, 1], 'hint', and 'label' if any."""
    source, _, heldout = heldout_split(config)
    if not 0 < num <= len(heldout):
        raise ConfigError(
            f"--hints_from_data {num}: the run holds out {len(heldout)} images "
            "(controlnet.heldout); ask for 1 to that many"
        )
    with_hints = HintSource(config, source, heldout)
    with_hints.with_hints = "hint" not in source[0]  # also when the train step makes them
    records = [with_hints[k] for k in range(num)]
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    batch["image"] = batch["image"].astype(np.float32) / 127.5 - 1.0
    return batch


# --------------------------------------------------------------------------- sampling


def read_hint_image(
    config: ml_collections.ConfigDict, path: str, *, compute: bool
) -> tuple[np.ndarray, str]:
    """(hint (1, S, S, 1), what was done) from a PNG/JPEG/.npy file of any size.

    ``compute``: the file is an ordinary image; it is made grey, resized (and padded) like
    the training images and the run's hint is computed from it. Otherwise the file is the
    hint map itself: made grey, scaled to [0, 1], resized to S x S (INTER_AREA when
    shrinking) and, for edge-like hints, binarised at 0.5.
    """
    size = int(config.data.image_size)
    if path.endswith(".npy"):
        try:
            raw = np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the hint image {path}: {e}") from None
    else:
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read the hint image {path} (PNG, JPEG or .npy)")
    raw = np.asarray(raw)
    if raw.ndim == 3:
        raw = cv2.cvtColor(raw[..., :3].astype(np.float32), cv2.COLOR_BGR2GRAY)
    if raw.ndim != 2:
        raise ValueError(f"the hint image {path} has shape {raw.shape}; want (H, W[, C])")
    if raw.dtype == np.uint16:
        gray = raw.astype(np.float32) / 65535.0
    elif raw.dtype == np.uint8 or raw.max() > 1:
        gray = raw.astype(np.float32) / 255.0
    else:
        gray = raw.astype(np.float32)
    note = f"{path}: {raw.shape[1]}x{raw.shape[0]} grey"
    if compute:
        resize_to = int(config.data.get("resize_to") or size)
        image = cv2.resize(gray, (resize_to, resize_to), interpolation=cv2.INTER_AREA)
        pad = (size - resize_to) // 2
        image = np.pad(image, ((pad, size - resize_to - pad),) * 2)
        hint = make_hints(config, np.round(image * 255).astype(np.uint8)[None, ..., None])
        return hint, note + f" -> resized to {resize_to}x{resize_to}, padded to {size}, " \
            f"{config.controlnet.hint} hint computed"
    hint = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    note += f" -> resized to {size}x{size}"
    if config.controlnet.hint in BINARY_HINTS:
        hint, note = (hint > 0.5).astype(np.float32), note + ", binarised at 0.5"
    return np.clip(hint, 0, 1)[None, ..., None].astype(np.float32), note


def sample_conds(
    config: ml_collections.ConfigDict,
    labels: Any,
    *,
    num: int = 1,
    hint_image: str | None,
    hint_type: str | None,
    compute_hint: bool,
    hints_from_data: int | None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """(cond with 'hint', the held-out images or None) for experiments.sample.

    ``labels``: the CLI's label array (or None: ``num`` images of an unconditional model);
    with ``hints_from_data`` the held-out records' own labels replace it.
    """
    trained = config.controlnet.hint
    if hint_type is not None and hint_type != trained:
        raise ConfigError(
            f"this ControlNet was trained on {trained!r} hints, not {hint_type!r}"
        )
    if (hint_image is None) == (hints_from_data is None):
        raise ConfigError(
            "a ControlNet run samples from a hint: give --hint_image PATH or --hints_from_data N"
        )
    if hints_from_data is not None:
        batch = heldout_batch(config, int(hints_from_data))
        cond = {"hint": jnp.asarray(batch["hint"])}
        if "label" in batch and config.model.get("num_classes"):
            cond["label"] = jnp.asarray(batch["label"], jnp.int32)
        return cond, batch["image"]
    hint, note = read_hint_image(config, hint_image, compute=compute_hint)
    print(note)
    batch = num if labels is None else len(labels)
    cond = {"hint": jnp.asarray(np.repeat(hint, batch, axis=0))}
    if labels is not None:
        cond["label"] = labels
    return cond, None


def hints_above(images: np.ndarray, hint_maps: np.ndarray, *, ncol: int) -> np.ndarray:
    """Rows of ``ncol`` hints (as [-1, 1] images) each above its row of samples."""
    shown = np.broadcast_to(
        np.asarray(hint_maps) * 2.0 - 1.0, images.shape[:3] + (images.shape[-1],)
    )
    rows = []
    for start in range(0, len(images), ncol):
        rows += [shown[start : start + ncol], images[start : start + ncol]]
        pad = ncol - len(images[start : start + ncol])
        if pad:
            blank = -np.ones((pad,) + images.shape[1:], np.float32)
            rows[-2], rows[-1] = (np.concatenate([r, blank]) for r in rows[-2:])
    return np.concatenate(rows)
