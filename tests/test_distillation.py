"""Progressive distillation (Salimans & Ho 2022, alg. 2): the target against a float64 NumPy
transcription, a student that does exactly the teacher's two steps in one (zero loss, and the
same samples), and training a UNet / DiT student against a frozen (guided) teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import distillation, models, optim, samplers, schedules
from jaxdiff import train as jd_train

T, N = 16, 4  # student grid 15, 11, 7, 3 (-> clean); teacher grid every 2
SCHED = schedules.cosine(T)
SHAPE = (6, 4, 4, 1)
STD = 0.5  # data N(0, STD^2): the exact denoiser is linear in z


def toy_teacher_x0(z, t):
    """A smooth, time-dependent x prediction (the truth for no data)."""
    return 0.8 * jnp.tanh(z) + 0.02 * t.astype(z.dtype).reshape((-1,) + (1,) * (z.ndim - 1))


def test_target_matches_hand_computed_alg_2():
    rng = np.random.default_rng(0)
    z = rng.normal(size=SHAPE)
    t = np.array([15, 11, 7, 3, 3, 15])
    got = distillation.distillation_target(
        toy_teacher_x0, SCHED, jnp.asarray(z, jnp.float32), jnp.asarray(t), num_student_steps=N
    )
    ab_table = np.asarray(SCHED.alpha_bars, np.float64)
    expected = np.zeros(SHAPE)
    for b in range(SHAPE[0]):
        a = lambda s: np.sqrt(ab_table[s]) if s >= 0 else 1.0
        sig = lambda s: np.sqrt(1 - ab_table[s]) if s >= 0 else 0.0
        x_teacher = lambda zz, s: 0.8 * np.tanh(zz) + 0.02 * s
        t1, t2 = t[b] - 2, t[b] - 4  # t - 1/(2N) and t - 1/N in units of T = 16
        x = x_teacher(z[b], t[b])
        z1 = a(t1) * x + sig(t1) / sig(t[b]) * (z[b] - a(t[b]) * x)
        x1 = x_teacher(z1, t1)
        z2 = a(t2) * x1 + sig(t2) / sig(t1) * (z1 - a(t1) * x1)
        expected[b] = (z2 - sig(t2) / sig(t[b]) * z[b]) / (a(t2) - sig(t2) / sig(t[b]) * a(t[b]))
    assert t[3] - 4 == -1  # the last student step lands on the clean image: x_tilde = z''
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_loss_is_the_truncated_snr_weighted_x_error():
    """One eager loss call, with the z_t and t the student saw: max(SNR, 1) ||x_hat - x~||^2."""
    seen = {}

    def student_apply(variables, z, t, cond, train, rngs):
        seen.update(z=z, t=t, cond=cond)
        return 0.3 * z * variables["params"]["w"]  # a v output

    def teacher_fn(z, t, cond):  # the toy teacher as a v output
        return schedules.v_from(SCHED, toy_teacher_x0(z, t), t, jnp.zeros_like(z)) + 0.0

    def teacher_x0(z, t):  # teacher_fn's x0, v -> x0 as the loss converts it (then clipped)
        x0, _ = schedules.to_x0_eps(SCHED, z, t, teacher_fn(z, t, None), "v")
        return jnp.clip(x0, -1.0, 1.0)

    loss_fn = distillation.make_progressive_distillation_loss(
        student_apply, teacher_fn, SCHED, num_student_steps=N
    )
    image = jax.random.uniform(jax.random.key(1), SHAPE, minval=-1.0, maxval=1.0)
    loss, metrics = loss_fn({"w": jnp.ones(())}, {"image": image}, jax.random.key(2))
    t, z = seen["t"], seen["z"]
    assert set(np.asarray(t)) <= {3, 7, 11, 15} and len(set(np.asarray(t))) > 1
    target = distillation.distillation_target(teacher_x0, SCHED, z, t, num_student_steps=N)
    ab = np.asarray(SCHED.alpha_bars)[np.asarray(t)]
    x_hat = np.sqrt(ab)[:, None, None, None] * z - np.sqrt(1 - ab)[:, None, None, None] * 0.3 * z
    per_example = np.mean((x_hat - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(loss, np.mean(np.maximum(ab / (1 - ab), 1) * per_example), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse_x0"], per_example.mean(), rtol=1e-5)


def gaussian_x0_coef(s):
    """E[x0 | z_s] = c_s z_s for data N(0, STD^2): c = alpha STD^2 / (alpha^2 STD^2 + sigma^2)."""
    ab = np.asarray(SCHED.alpha_bars, np.float64)[s]
    return np.sqrt(ab) * STD**2 / (ab * STD**2 + 1 - ab)


def test_student_doing_two_teacher_steps_in_one_has_zero_loss_and_same_samples():
    """A linear teacher x = c_t z composes to z'' = m_t z over two DDIM steps; the student
    x = d_t z with d_t = (m_t - sigma''/sigma) / (alpha'' - sigma''/sigma alpha), derived here
    by hand, has zero loss, and its N-step DDIM equals the teacher's 2N-step DDIM."""
    ab = lambda s: float(SCHED.alpha_bars[s]) if s >= 0 else 1.0
    d = np.zeros(T)
    for t in (15, 11, 7, 3):
        m = 1.0
        for s, s_next in ((t, t - 2), (t - 2, t - 4)):
            c = gaussian_x0_coef(s)
            ratio = np.sqrt(1 - ab(s_next)) / np.sqrt(1 - ab(s))
            m *= np.sqrt(ab(s_next)) * c + ratio * (1 - np.sqrt(ab(s)) * c)
        r = np.sqrt(1 - ab(t - 4)) / np.sqrt(1 - ab(t))
        d[t] = (m - r) / (np.sqrt(ab(t - 4)) - r * np.sqrt(ab(t)))
    teacher_c = jnp.asarray([gaussian_x0_coef(s) for s in range(T)], jnp.float32)

    def as_v(x0_coef):
        def fn(z, t, cond):
            x0 = x0_coef[t][:, None, None, None] * z
            ab_t = SCHED.alpha_bars[t][:, None, None, None]
            return (jnp.sqrt(ab_t) * z - x0) / jnp.sqrt(1 - ab_t)  # v from x0 and z
        return fn

    teacher, student = as_v(teacher_c), as_v(jnp.asarray(d, jnp.float32))
    loss_fn = lambda student_fn: distillation.make_progressive_distillation_loss(
        lambda v, z, t, c, train, rngs: student_fn(z, t, c), teacher, SCHED,
        num_student_steps=N, clip_x0=False,
    )
    batch = {"image": STD * jax.random.normal(jax.random.key(3), (64, 4, 4, 1))}
    loss, _ = loss_fn(student)({}, batch, jax.random.key(4))
    teacher_as_student, _ = loss_fn(teacher)({}, batch, jax.random.key(4))
    assert float(loss) < 1e-9 and float(teacher_as_student) > 1e-3
    kw = dict(prediction="v", clip_x0=False, spacing="trailing")
    one, _ = samplers.ddim(student, SCHED, jax.random.key(5), SHAPE, num_steps=N, **kw)
    two, _ = samplers.ddim(teacher, SCHED, jax.random.key(5), SHAPE, num_steps=2 * N, **kw)
    np.testing.assert_allclose(one, two, atol=1e-5)


MODELS = {
    "unet": dict(name="unet", block_out_channels=(8, 16), layers_per_block=1,
                 attention_levels=(), mid_attention=False, norm_num_groups=4, num_classes=3),
    "dit": dict(name="dit", num_classes=3, patch_size=2, hidden_size=16, depth=1, num_heads=2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_train_student_against_frozen_guided_teacher(name):
    """Student = a copy of the teacher; train steps change the student, never the teacher."""
    model = models.build(MODELS[name])
    x = jnp.zeros((1, 8, 8, 1))
    teacher_params = model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), None)["params"]
    teacher_copy = jax.tree.map(np.array, teacher_params)
    teacher_fn = lambda z, t, c: model.apply({"params": teacher_params}, z, t, c)
    loss_fn = distillation.make_progressive_distillation_loss(
        model.apply, teacher_fn, schedules.cosine(8), num_student_steps=2,
        teacher_guidance_scale=2.0, num_classes=3,
    )
    optimizer = optim.make_optimizer(learning_rate=3e-3, grad_clip=None, ema_decay=0.9)
    mesh = jd_train.make_mesh()
    state = jd_train.create_train_state(
        jax.tree.map(jnp.array, teacher_params), optimizer, jax.random.key(1)
    )
    step = jd_train.make_train_step(loss_fn, optimizer, mesh)
    batch = {
        "image": jax.random.uniform(jax.random.key(2), (4, 8, 8, 1), minval=-1, maxval=1),
        "label": jnp.asarray([0, 1, 2, 0], jnp.int32),
    }
    state, metrics = step(state, batch)
    assert np.isfinite(metrics["loss"]) and float(metrics["loss"]) > 0
    after = jax.tree.map(np.array, teacher_params)
    jax.tree.map(np.testing.assert_array_equal, teacher_copy, after)
    # Some leaves get no gradient yet (DiT's adaLN-Zero init), so: some, not all, change.
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), teacher_copy, state.params)
    assert any(jax.tree.leaves(changed))


def test_errors_are_clear():
    fn = lambda z, t, c: z
    with pytest.raises(ValueError, match="divide"):
        distillation.make_progressive_distillation_loss(fn, fn, SCHED, num_student_steps=3)
    with pytest.raises(ValueError, match="divide"):
        distillation.make_progressive_distillation_loss(fn, fn, SCHED, num_student_steps=16)
    with pytest.raises(ValueError, match="prediction"):
        distillation.make_progressive_distillation_loss(
            fn, fn, SCHED, num_student_steps=2, teacher_prediction="noise"
        )
