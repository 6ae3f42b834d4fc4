"""Sample-quality metrics: Frechet distance in a classifier's feature space, and accuracy.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium", eq. 6) fits a Gaussian to the features of real and of generated images
and reports the Frechet (2-Wasserstein) distance between the two Gaussians,

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

Here the features come from ``jaxdiff.models.classifier.Classifier`` trained on the dataset
itself (see that module for why not Inception). The numbers are therefore comparable across
runs and samplers on one dataset and one classifier, never with published FIDs. FID is
biased upwards at small sample sizes, so an evaluation also reports the real-vs-real floor:
the FID between two disjoint real sets of the same size as the generated set.

Class-conditional accuracy (the fraction of samples generated for label y that the
classifier puts in class y) measures how well a conditional sampler follows its label, e.g.
as classifier-free guidance (Ho & Salimans 2022) gets stronger.

The feature classifier is trained once per dataset and cached as an ``.npz`` file whose name
is a hash of the training images, labels and hyper-parameters, so a changed dataset or
classifier never reuses a stale cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxdiff.models.classifier import Classifier

# --------------------------------------------------------------------------- Frechet distance


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. eq. 6).

    The cross term uses the symmetric form
    ``tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` (the two matrices are similar),
    computed with two symmetric eigendecompositions in float64. Unlike ``scipy.linalg.sqrtm``
    of the non-symmetric product S1 S2, the middle matrix is symmetric positive
    semi-definite, so its eigenvalues are real and only need clipping of rounding noise at 0:
    no complex parts to discard and no ``eps * I`` offset when a covariance is singular
    (fewer samples than feature dimensions, dead features).

    Args:
      mu1, mu2: (D,) means.
      sigma1, sigma2: (D, D) symmetric positive semi-definite covariances.

    Returns:
      The squared Frechet distance (what is called "FID"), >= 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or (
        sigma2.shape != (dim, dim)
    ):
        raise ValueError(
            "frechet_distance needs means of shape (D,) and covariances of shape (D, D) with "
            f"one D; got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("frechet_distance got non-finite means or covariances (NaN/inf features?)")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_cross = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_cross
    # Rounding can leave a tiny negative number for identical Gaussians; a distance is >= 0.
    return float(max(distance, 0.0))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root V diag(sqrt(w)) V^T of a symmetric PSD matrix."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"gaussian_fit needs features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D): Frechet distance of their Gaussians."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def conditional_accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose predicted class equals ``labels``.

    Args:
      logits_or_preds: (N, K) logits (argmax is taken) or (N,) int predicted classes.
      labels: (N,) int labels (for samples: the label each one was generated for).
    """
    preds = np.asarray(logits_or_preds)
    labels = np.asarray(labels)
    if preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or preds.shape != labels.shape:
        raise ValueError(
            f"conditional_accuracy needs logits (N, K) or predictions (N,) and labels (N,); "
            f"got {np.asarray(logits_or_preds).shape} and {labels.shape}"
        )
    return float(np.mean(preds == labels))


# --------------------------------------------------------------------- feature classifier


def split_heldout(
    images: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Random disjoint split into ``((train_images, train_labels), (heldout_images, ...))``."""
    n = len(images)
    num_heldout = int(round(n * fraction))
    if not 0 < num_heldout < n:
        raise ValueError(f"holdout fraction {fraction} of {n} images leaves an empty split")
    order = np.random.default_rng(seed).permutation(n)
    train, heldout = order[num_heldout:], order[:num_heldout]
    return (images[train], labels[train]), (images[heldout], labels[heldout])


def train_feature_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    seed: int,
    heldout: tuple[np.ndarray, np.ndarray] | None = None,
    holdout_fraction: float = 0.2,
    model: nn.Module | None = None,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
) -> tuple[Any, float]:
    """Trains the feature classifier with Adam and a cosine learning-rate decay.

    Args:
      images: (N, H, W, C) float32 in [-1, 1].
      labels: (N,) int labels in [0, num_classes).
      steps: optimizer steps (batches drawn uniformly with replacement).
      seed: seeds the init, the batches and (if ``heldout`` is None) the held-out split.
      heldout: (images, labels) to measure accuracy on; if None, ``holdout_fraction`` of
        ``images`` is split off and not trained on.
      model: the classifier; default ``Classifier(num_classes=labels.max() + 1)``.

    Returns:
      ``(params, heldout_accuracy)``; params is the inner tree for
      ``model.apply({'params': params}, x, return_features=True)``.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(
            f"train_feature_classifier needs images (N, H, W, C) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    if heldout is None:
        (images, labels), heldout = split_heldout(
            images, labels, fraction=holdout_fraction, seed=seed
        )
    model = model or Classifier(num_classes=int(labels.max()) + 1)
    key_init, key_batches = jax.random.split(jax.random.key(seed))
    params = model.init(key_init, jnp.asarray(images[:1]))["params"]
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    batch_size = min(batch_size, len(images))

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # A Python loop over one jitted step, not a lax.scan: on XLA:CPU the conv gradients ran
    # ~30x slower inside a scan body than as a top-level computation (jax 0.10.2).
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, images, labels, key):
        idx = jax.random.randint(key, (batch_size,), 0, images.shape[0])
        grads = jax.grad(loss_fn)(params, images[idx], labels[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    device_images, device_labels = jnp.asarray(images), jnp.asarray(labels)
    for i in range(steps):
        key = jax.random.fold_in(key_batches, i)
        params, opt_state = step(params, opt_state, device_images, device_labels, key)
    logits, _ = classifier_outputs(model, params, heldout[0])
    return params, conditional_accuracy(logits, heldout[1])


def classifier_outputs(
    model: nn.Module, params: Any, images: np.ndarray, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and features (N, feature_dim) of images (N, H, W, C), as numpy float32.

    Runs in fixed-size batches (the last one padded) so the apply compiles once.
    """
    images = np.asarray(images, np.float32)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, return_features=True))
    batch_size = min(batch_size, len(images))
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pad = batch_size - len(batch)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
        out_logits, out_features = jax.device_get(apply(params, batch))
        logits.append(out_logits[: batch_size - pad])
        features.append(out_features[: batch_size - pad])
    return np.concatenate(logits), np.concatenate(features)


def load_or_train_feature_classifier(
    cache_dir: str | pathlib.Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    seed: int,
    heldout: tuple[np.ndarray, np.ndarray],
    model: nn.Module,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
) -> tuple[Any, float, pathlib.Path, bool]:
    """``train_feature_classifier`` behind an ``.npz`` cache in ``cache_dir``.

    The file name is a hash of the data and every training option, so a second evaluation
    of the same dataset reloads the classifier and anything else retrains.

    Returns:
      ``(params, heldout_accuracy, cache_path, loaded)``; ``loaded`` says whether the cache
      was used.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    digest = hashlib.sha256()
    for array in (images, labels, *heldout):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    digest.update(repr((model, steps, seed, batch_size, learning_rate)).encode())
    path = pathlib.Path(cache_dir) / f"feature_classifier_{digest.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as stored:
            flat = {
                tuple(k.split("/")[1:]): jnp.asarray(stored[k])
                for k in stored.files
                if k.startswith("params/")
            }
            accuracy = float(stored["heldout_accuracy"])
        return traverse_util.unflatten_dict(flat), accuracy, path, True
    params, accuracy = train_feature_classifier(
        images,
        labels,
        steps=steps,
        seed=seed,
        heldout=heldout,
        model=model,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    arrays = {
        "params/" + "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted save never leaves a truncated cache behind.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, heldout_accuracy=np.float64(accuracy), **arrays)
    os.replace(f.name, path)
    return params, accuracy, path, False
