# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Few-step sampling: DPM-Solver++ and progressive distillation
#
# A diffusion model samples by integrating the probability-flow ODE from noise to data. With
# few steps, DDIM (Song et al. 2021, eq. 12) cuts corners: at one step it returns the
# *average* image $E[x_0 \mid x_T]$. Two remedies:
#
# * **DPM-Solver++(2M)** (Lu et al. 2022, alg. 2): a better ODE solver for the *same* model,
#   second order in $\lambda_t = \log(\alpha_t / \sigma_t)$, no training.
# * **Progressive distillation** (Salimans & Ho 2022, alg. 2): *train* a student so that one
#   of its DDIM steps does what two of the teacher's do; repeat, halving the steps.
#
# Everything here runs on a 2-D toy whose exact denoiser is known, so the teacher is perfect
# and every difference comes from the sampler or the student.

# %%
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxdiff as jd

TINY = os.environ.get("JAXDIFF_TINY") == "1"
NUM_POINTS = 300 if TINY else 2000  # samples per scatter plot
START_STEPS = 4 if TINY else 32  # the exact teacher's DDIM steps in the first round
ROUND_STEPS = 100 if TINY else 1500  # train steps per distillation round
BATCH = 128 if TINY else 512

# %% [markdown]
# ## 1. Data and the exact teacher
#
# Four Gaussian clusters with centres `means` $m_k$ and standard deviation `data_std`
# $s$, stored as (1, 1, 2) "images" so the library's NHWC samplers apply unchanged.
# `schedule` is the cosine schedule (Nichol & Dhariwal eq. 17) with `T = 64` steps, a power
# of two, so the "trailing" grids of 64, 32, ..., 1 steps nest
# (`jd.samplers.timestep_grid`).
#
# `teacher_v(x, t, cond)` is the exact model in v-parameterisation (Salimans & Ho sec. 4):
# under $q(x_t \mid x_0)$ cluster $k$ becomes $\mathcal N(\alpha_t m_k, (\alpha_t^2 s^2 +
# \sigma_t^2) I)$, so $E[x_0 \mid x_t]$ is the posterior-weighted mean of each cluster's
# Gaussian posterior mean, and $v = (\alpha_t x_t - \hat x_0) / \sigma_t$.

# %%
T = 64
schedule = jd.schedules.cosine(T)
means = jnp.asarray([[0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]], jnp.float32)
data_std = 0.08
shape = (NUM_POINTS, 1, 1, 2)


def sample_data(key, n):
    key_k, key_x = jax.random.split(key)
    k = jax.random.randint(key_k, (n,), 0, len(means))
    return (means[k] + data_std * jax.random.normal(key_x, (n, 2)))[:, None, None, :]


def teacher_x0(x, t):
    ab = schedule.alpha_bars[t][:, None, None]  # (B, 1, 1) against the (B, K, 2) below
    alpha, var = jnp.sqrt(ab), ab * data_std**2 + 1.0 - ab
    d = x.reshape(-1, 1, 2) - alpha * means[None]
    p = jax.nn.softmax(-jnp.sum(d**2, -1) / (2 * var[..., 0]), -1)  # p(k | x_t)
    post = means[None] + alpha * data_std**2 / var * d  # E[x0 | x_t, k]
    return jnp.einsum("bk,bkd->bd", p, post).reshape(x.shape)


def teacher_v(x, t, cond):
    ab = schedule.alpha_bars[t][:, None, None, None]
    return (jnp.sqrt(ab) * x - teacher_x0(x, t)) / jnp.sqrt(1.0 - ab)


def scatter(ax, points, title):
    points = np.asarray(points).reshape(-1, 2)
    ax.scatter(points[:, 0], points[:, 1], s=2)
    ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), title=title, aspect="equal")


# %% [markdown]
# ## 2. The same exact model, few steps: DDIM against DPM-Solver++
#
# `ddim(n)` and `dpm(n)` sample with `n` steps on the trailing grid. DDIM at 1 step lands
# on $E[x_0 \mid x_T] \approx 0$; DPM-Solver++ uses its previous $\hat x_0$ to extrapolate
# ($D_i = (1 + \tfrac{1}{2r_i})\hat x_0^{(i)} - \tfrac{1}{2r_i}\hat x_0^{(i-1)}$) and stays
# much closer to the clusters at 4-8 steps, but it cannot help at 1-2 steps.

# %%
key = jax.random.key(0)
kw = dict(prediction="v", clip_x0=False, spacing="trailing")
ddim = lambda fn, n: jd.samplers.ddim(fn, schedule, key, shape, num_steps=n, **kw)[0]
dpm = lambda fn, n: jd.samplers.dpm_solver_pp(fn, schedule, key, shape, num_steps=n, **kw)[0]

fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for ax, n in zip(axes[0], (T, 8, 2, 1), strict=True):
    scatter(ax, ddim(teacher_v, n), f"teacher, DDIM {n} steps")
for ax, n in zip(axes[1], (T, 8, 4, 2), strict=True):
    scatter(ax, dpm(teacher_v, n), f"teacher, DPM-Solver++ {n} steps")
fig.tight_layout()

# %% [markdown]
# ## 3. The student and the distillation loss
#
# `Student` is a small MLP with the library's model call `apply(params, x_t, t, cond,
# train=...)`, predicting v from $x_t$ and a sinusoidal embedding of $t$.
#
# `jd.distillation.make_progressive_distillation_loss(student.apply, teacher_fn, schedule,
# num_student_steps=N)` builds the alg. 2 loss: $t$ on the student's N-step grid, two DDIM
# steps of the teacher $t \to t - \tfrac{T}{2N} \to t - \tfrac{T}{N}$ landing on $z''$, the
# target $\tilde x = (z'' - \tfrac{\sigma''}{\sigma_t} z_t) / (\alpha'' -
# \tfrac{\sigma''}{\sigma_t}\alpha_t)$ that makes the student's single DDIM step land on the
# same $z''$, and the truncated-SNR weight $\max(\mathrm{SNR}_t, 1)\lVert \hat x - \tilde x
# \rVert^2$. `clip_x0=False`: the toy is not an image in $[-1, 1]$.

# %%
class Student(nn.Module):
    width: int = 128

    @nn.compact
    def __call__(self, x, t, cond=None, *, train=False):
        freqs = jnp.exp(jnp.linspace(0.0, 6.0, 16))
        angle = t.astype(jnp.float32)[:, None] / T * freqs
        h = jnp.concatenate([x.reshape(-1, 2), jnp.sin(angle), jnp.cos(angle)], -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(2)(h).reshape(x.shape)


student = Student()
optimizer = jd.optim.make_optimizer(learning_rate=2e-3, ema_decay=0.99, grad_clip=1.0)
mesh = jd.train.make_mesh()


def distill_round(teacher_fn, n, params, key):
    """Trains a student for n steps against teacher_fn (2n steps); returns its EMA params."""
    loss_fn = jd.distillation.make_progressive_distillation_loss(
        student.apply, teacher_fn, schedule, num_student_steps=n, clip_x0=False
    )
    state_key, data_key = jax.random.split(key)  # the train step donates state_key
    state = jd.train.create_train_state(params, optimizer, state_key)
    step = jd.train.make_train_step(loss_fn, optimizer, mesh)
    losses = []
    for i in range(ROUND_STEPS):
        batch = {"image": sample_data(jax.random.fold_in(data_key, i), BATCH)}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return jd.optim.ema_params(state.opt_state), losses


# %% [markdown]
# ## 4. Rounds: START_STEPS/2, ..., 2, 1 steps
#
# The first teacher is the exact model; each later round's teacher is the previous
# student (its EMA params) and the new student starts from it, as in the paper. `students`
# maps a step count to its params.

# %%
params = student.init(jax.random.key(1), jnp.zeros((1, 1, 1, 2)), jnp.zeros((1,), jnp.int32))[
    "params"
]
teacher_fn, students, curves = teacher_v, {}, {}
n = START_STEPS // 2
while n >= 1:
    params, curves[n] = distill_round(teacher_fn, n, jax.tree.map(jnp.copy, params),
                                      jax.random.key(n))
    students[n] = params
    teacher_fn = lambda x, t, c, p=params: student.apply({"params": p}, x, t, c)
    n //= 2

fig, ax = plt.subplots(figsize=(6, 3))
for n, losses in curves.items():
    ax.plot(np.convolve(losses, np.ones(10) / 10, "valid"), label=f"{2 * n}->{n} steps")
ax.set(yscale="log", xlabel="train step", ylabel="distillation loss", title="each round")
ax.legend();

# %% [markdown]
# ## 5. Students against the teacher at the same step counts
#
# Top row: the exact teacher with DDIM at 4, 2 and 1 steps. Bottom row: the students,
# sampled with their own step count (DDIM, trailing grid). The students keep the four
# clusters apart where DDIM on the teacher collapses them toward the centre.

# %%
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for i, n in enumerate((4, 2, 1)):
    scatter(axes[0, i], ddim(teacher_v, n), f"teacher, DDIM {n} steps")
    if n in students:
        fn = lambda x, t, c, p=students[n]: student.apply({"params": p}, x, t, c)
        scatter(axes[1, i], ddim(fn, n), f"student, {n} steps")
fig.tight_layout()
