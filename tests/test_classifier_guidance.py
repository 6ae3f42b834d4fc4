"""Classifier guidance (Dhariwal & Nichol 2021, eq. 14): the closed form for a linear-logistic
classifier, exactness at scale 0, every prediction type, composition with CFG, one scan,
and that it really moves samples toward their label."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_guidance import NUM_CLASSES, label_fn
from test_samplers import count_scans

from jaxdiff import guidance, samplers, schedules
from jaxdiff.models.classifier import Classifier

SHAPE = (4, 4, 4, 1)
D = 16
SCHEDULE = schedules.cosine(50)


def linear_logistic(num_classes=NUM_CLASSES, seed=1):
    """logits = c_t x W + b with c_t = 1 + t/10: a time-dependent linear-logistic classifier
    whose gradient is known in closed form, grad log p(y|x) = c_t (W_y - sum_k p_k W_k)."""
    kw, kb = jax.random.split(jax.random.key(seed))
    W = jax.random.normal(kw, (D, num_classes))
    b = jax.random.normal(kb, (num_classes,))

    def classifier_fn(x, t):
        c = 1.0 + t.astype(jnp.float32) / 10.0
        return c[:, None] * (x.reshape(x.shape[0], -1) @ W) + b

    def closed_form_grad(x, t, y):
        x, W_, b_ = (np.asarray(a, np.float64) for a in (x, W, b))
        c = 1.0 + np.asarray(t, np.float64) / 10.0
        logits = c[:, None] * (x.reshape(len(x), -1) @ W_) + b_
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        grad = c[:, None] * (W_[:, np.asarray(y)].T - p @ W_.T)
        return grad.reshape(x.shape)

    return classifier_fn, closed_form_grad


def inputs():
    x = jax.random.normal(jax.random.key(0), SHAPE)
    t = jnp.array([0, 13, 30, 49], jnp.int32)
    labels = jnp.array([0, 1, 2, 1], jnp.int32)
    return x, t, labels


def sigma_of(t):
    return np.sqrt(1.0 - np.asarray(SCHEDULE.alpha_bars)[np.asarray(t)])[:, None, None, None]


@pytest.mark.parametrize("scale", [1.0, 4.5])
def test_linear_logistic_matches_closed_form(scale):
    classifier_fn, closed_form_grad = linear_logistic()
    x, t, labels = inputs()
    eps = label_fn(x, t, labels)
    out = guidance.classifier_guidance(label_fn, classifier_fn, SCHEDULE, scale=scale)(
        x, t, labels
    )
    # eq. 14: eps' = eps - s sqrt(1 - alpha_bar_t) grad log p(y | x_t), each example toward
    # its own label (labels differ across the batch).
    expected = np.asarray(eps) - scale * sigma_of(t) * closed_form_grad(x, t, labels)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(out) - np.asarray(eps)).max() > 0.1


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_other_predictions_shift_eps_by_the_formula(prediction):
    """An x0 or v model: to_x0_eps of the guided output gives the guided eps (and the x0
    consistent with it at the same x_t)."""
    classifier_fn, closed_form_grad = linear_logistic()
    x, t, labels = inputs()
    guided = guidance.classifier_guidance(
        label_fn, classifier_fn, SCHEDULE, scale=2.0, prediction=prediction
    )
    _, eps = schedules.to_x0_eps(SCHEDULE, x, t, label_fn(x, t, labels), prediction)
    x0_g, eps_g = schedules.to_x0_eps(SCHEDULE, x, t, guided(x, t, labels), prediction)
    expected = np.asarray(eps) - 2.0 * sigma_of(t) * closed_form_grad(x, t, labels)
    np.testing.assert_allclose(eps_g, expected, rtol=1e-4, atol=1e-4)
    alpha = np.sqrt(np.asarray(SCHEDULE.alpha_bars)[np.asarray(t)])[:, None, None, None]
    np.testing.assert_allclose(x0_g, (np.asarray(x) - sigma_of(t) * expected) / alpha,
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_scale_zero_is_exactly_the_plain_output(prediction):
    classifier_fn, _ = linear_logistic()
    x, t, labels = inputs()
    plain = label_fn(x, t, labels)
    assert guidance.classifier_guidance(
        label_fn, classifier_fn, SCHEDULE, scale=0.0, prediction=prediction
    ) is label_fn
    traced = jax.jit(lambda s: guidance.classifier_guidance(
        label_fn, classifier_fn, SCHEDULE, scale=s, prediction=prediction)(x, t, labels))
    np.testing.assert_array_equal(traced(jnp.float32(0.0)), plain)


def test_composes_with_cfg():
    """Both guidances at once: the CFG combination, then the classifier's shift."""
    classifier_fn, closed_form_grad = linear_logistic()
    x, t, labels = inputs()
    w, s = 2.0, 3.0
    both = guidance.classifier_guidance(
        guidance.cfg(label_fn, guidance_scale=w, num_classes=NUM_CLASSES),
        classifier_fn, SCHEDULE, scale=s,
    )(x, t, labels)
    null = jnp.full_like(labels, NUM_CLASSES)
    cfg_eps = (1 + w) * label_fn(x, t, labels) - w * label_fn(x, t, null)
    expected = np.asarray(cfg_eps) - s * sigma_of(t) * closed_form_grad(x, t, labels)
    np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-5)
    # A dict condition guides toward its 'label'.
    via_dict = guidance.classifier_guidance(
        lambda x, t, c: label_fn(x, t, c["label"]), classifier_fn, SCHEDULE, scale=s
    )(x, t, {"label": labels})
    np.testing.assert_allclose(
        via_dict, np.asarray(label_fn(x, t, labels)) - s * sigma_of(t)
        * closed_form_grad(x, t, labels), rtol=1e-5, atol=1e-5)


def test_needs_int_labels():
    classifier_fn, _ = linear_logistic()
    x, t, _ = inputs()
    guided = guidance.classifier_guidance(label_fn, classifier_fn, SCHEDULE, scale=1.0)
    with pytest.raises(ValueError, match="int class labels"):
        guided(x, t, None)
    with pytest.raises(ValueError, match="int class labels"):
        guided(x, t, jnp.zeros((4, 3)))


def gaussian_eps(x, t, cond):
    """The exact eps of data x0 ~ N(0, I): x_t ~ N(0, I), score -x_t, eps = sigma_t x_t."""
    del cond
    return jnp.sqrt(1.0 - SCHEDULE.alpha_bars[t])[:, None, None, None] * x


def test_guidance_raises_log_prob_of_samples():
    """DDIM from the same noise: with guidance the samples' log p(y | x_0) under the classifier
    rises with the scale, for every label of the batch."""
    classifier_fn, _ = linear_logistic(seed=3)
    labels = jnp.tile(jnp.arange(NUM_CLASSES, dtype=jnp.int32), 16)
    shape = (labels.shape[0], 4, 4, 1)

    def mean_log_prob(scale):
        guided = guidance.classifier_guidance(gaussian_eps, classifier_fn, SCHEDULE, scale=scale)
        x, _ = samplers.ddim(guided, SCHEDULE, jax.random.key(0), shape, cond=labels,
                             num_steps=20, clip_x0=False)
        log_probs = jax.nn.log_softmax(classifier_fn(x, jnp.zeros_like(labels)))
        per_example = jnp.take_along_axis(log_probs, labels[:, None], -1)[:, 0]
        return [float(per_example[labels == y].mean()) for y in range(NUM_CLASSES)]

    plain, mild, strong = mean_log_prob(0.0), mean_log_prob(1.0), mean_log_prob(4.0)
    for y in range(NUM_CLASSES):
        assert plain[y] < mild[y] < strong[y], (y, plain, mild, strong)
    assert np.mean(strong) > -0.05  # nearly every sample classified as its label


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guided_sampler_is_one_scan(sampler):
    """A real noise-conditioned classifier's gradient inside the sampler: still one scan."""
    model = Classifier(num_classes=NUM_CLASSES, channels=(4,), feature_dim=8, num_groups=2,
                       num_timesteps=SCHEDULE.num_timesteps)
    params = model.init(jax.random.key(0), jnp.zeros(SHAPE), jnp.zeros((4,), jnp.int32))
    labels = jnp.array([0, 1, 2, 0], jnp.int32)

    def run(params, key):
        guided = guidance.classifier_guidance(
            guidance.cfg(label_fn, guidance_scale=1.0, num_classes=NUM_CLASSES),
            lambda x, t: model.apply(params, x, t), SCHEDULE, scale=2.0,
        )
        options = {"num_steps": 5} if sampler == "ddim" else {}
        return getattr(samplers, sampler)(guided, SCHEDULE, key, SHAPE, cond=labels, **options)[0]

    jaxpr = jax.make_jaxpr(run)(params, jax.random.key(1))
    assert count_scans(jaxpr.jaxpr) == 1
