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
# # ControlNet: steering a frozen diffusion model with edges
#
# A ControlNet (Zhang, Rao & Agrawala 2023) adds *spatial* control to a trained diffusion
# model without touching it: a trainable copy of the model's encoder reads a **hint** (Canny
# edges, lines, scribbles, a segmentation or depth map) and feeds residuals into the frozen
# model's skip connections through **zero convolutions** (paper eq. 2). Because those start
# at zero, the controlled model is exactly the base at step 0 (eq. 3), and training can only
# add control.
#
# This notebook: (1) hint maps, and the pure-JAX Canny that matches OpenCV bit for bit;
# (2) a ControlNet over a small class-conditional UNet, trained for a few steps with the
# base frozen; (3) sampling from hints.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxdiff as jd
from jaxdiff import hints
from jaxdiff.models.controlnet import ControlledUNet, ControlNet
from jaxdiff.models.unet import UNet

TINY = os.environ.get("JAXDIFF_TINY") == "1"
SIZE = 8 if TINY else 16  # image side: 8x8 digits when tiny, the 16x16 digits otherwise
BASE_STEPS = 2 if TINY else 1500  # train steps of the base model
CONTROL_STEPS = 2 if TINY else 800  # train steps of the ControlNet
SAMPLE_STEPS = 3 if TINY else 50  # DDIM steps

# %% [markdown]
# ## 1. Hint maps
#
# `digits` are scikit-learn's 8x8 digits (`jd.sources.load_digits`), resized to `SIZE` with
# OpenCV as the training pipeline does; `images` are in [-1, 1] (the library's contract).
# Every hint function maps a batch (N, H, W, C) to float32 maps (N, H, W, 1) in [0, 1].
# `hints.canny` is `cv2.Canny` (Canny 1986: Sobel gradients, non-maximum suppression,
# hysteresis between a `low` and a `high` threshold on the gradient magnitude);
# `hints.canny_jax` is the same algorithm in JAX, jit-compiled here.

# %%
import cv2  # noqa: E402

source = jd.sources.load_digits()
digits = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
                   for im in source.images[:, :, :, 0]])[..., None]
labels = source.labels
images = digits.astype(np.float32) / 127.5 - 1.0

canny_jit = jax.jit(lambda x: hints.canny_jax(x, low=100, high=200))
edges = np.asarray(canny_jit(images[:512]))
print("JAX Canny == cv2.Canny on", len(edges), "digits:",
      np.array_equal(edges, hints.canny(digits[:512], low=100, high=200)))

maps = {name: hints.make(digits[:8], hint=name) for name in
        ("canny", "hough", "scribble", "segmentation")}
fig, axes = plt.subplots(5, 8, figsize=(8, 5.5))
for col in range(8):
    axes[0, col].imshow(digits[col, ..., 0], cmap="gray")
    for row, (name, m) in enumerate(maps.items(), start=1):
        axes[row, col].imshow(m[col, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(name, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ## 2. A frozen base and its ControlNet
#
# `base_model` is the library's UNet (labels plus classifier-free-guidance dropout, DDPM
# eq. 14 "simple" loss); `train(...)` runs `jd.train.make_train_step` over random batches of
# `images` and returns the EMA params. `controlnet` is `ControlNet.from_unet(base_model)`:
# the same encoder fields plus a hint encoder. `model = ControlledUNet(base_model,
# controlnet, base_params)` behaves like any jaxdiff model, but its params are the
# ControlNet's alone: the optimizer never sees the base.

# %%
schedule = jd.schedules.cosine(200)
# Tiny: one level without attention, so the compiles stay short.
base_model = UNet(block_out_channels=(8,) if TINY else (16, 32), layers_per_block=1,
                  attention_levels=() if TINY else (1,), mid_attention=not TINY,
                  norm_num_groups=4 if TINY else 8, num_classes=10)
mesh = jd.train.make_mesh(jax.devices()[:1])
t0 = jnp.zeros((1,), jnp.int32)


def train(model, params, steps, *, hinted):
    loss_fn = jd.losses.make_denoising_loss(model.apply, schedule, num_classes=10)
    optimizer = jd.optim.make_optimizer(learning_rate=1e-3, ema_decay=0.99,
                                        ema_start_step=min(100, steps))
    state = jd.train.create_train_state(params, optimizer, jax.random.key(1))
    step = jd.train.make_train_step(loss_fn, optimizer, mesh)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(images) - 100, 64)  # the last 100 digits are held out
        batch = {"image": images[idx], "label": labels[idx]}
        if hinted:
            batch["hint"] = np.asarray(canny_jit(images[idx]))
        state, metrics = step(state, batch)
    print(f"{steps} steps, last loss {float(metrics['loss']):.4f}")
    return jd.optim.ema_params(state.opt_state)


base_params = jax.jit(base_model.init)(jax.random.key(0), images[:1], t0, labels[:1])["params"]
base_params = train(base_model, base_params, BASE_STEPS, hinted=False)
base_copy = jax.device_get(base_params)

model = ControlledUNet(base_model, ControlNet.from_unet(base_model, hint_channels=(8,)),
                       base_params)
control_params = model.init(jax.random.key(2), images[:1], t0)["params"]
probe = {"label": labels[:4], "hint": edges[:4]}
same = np.array_equal(model.apply({"params": control_params}, images[:4], t0, probe),
                      base_model.apply({"params": base_params}, images[:4], t0, labels[:4]))
print("at initialisation the controlled output equals the base's exactly:", same)

control_params = train(model, control_params, CONTROL_STEPS, hinted=True)
print("base params bit-identical after training:", all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base_copy),
                                         jax.tree.leaves(model.base_params), strict=True)))

# %% [markdown]
# ## 3. Sampling from hints
#
# The held-out digits' Canny maps `hint` steer DDIM (Song et al. 2021, eq. 12) with
# classifier-free guidance (Ho & Salimans 2022, eq. 6, w = 2): the guidance drops the
# label and keeps the hint. The same `key` and labels give the base model's samples, and
# `hints.edge_f1` scores the Canny edges of each sample against its hint at exact pixels.

# %%
held = np.arange(len(images) - 10, len(images))
hint = np.asarray(canny_jit(images[held]))
cond = {"label": jnp.asarray(labels[held]), "hint": jnp.asarray(hint)}
key = jax.random.key(3)


def draw(apply, params, c):
    guided = jd.guidance.cfg(lambda x, t, cc: apply({"params": params}, x, t, cc),
                             guidance_scale=2.0, num_classes=10)
    out, _ = jd.samplers.ddim(guided, schedule, key, (len(held), SIZE, SIZE, 1), cond=c,
                              num_steps=SAMPLE_STEPS)
    return np.clip(np.asarray(out), -1, 1)


controlled = draw(model.apply, control_params, cond)
base = draw(base_model.apply, base_params, cond["label"])
print("edge F1, ControlNet:", hints.edge_f1(hints.canny(controlled), hint).mean().round(3),
      " base:", hints.edge_f1(hints.canny(base), hint).mean().round(3))
fig, axes = plt.subplots(3, len(held), figsize=(len(held), 3.3))
for col in range(len(held)):
    for row, picture in enumerate((hint[col] * 2 - 1, controlled[col], base[col])):
        axes[row, col].imshow(picture[..., 0], cmap="gray", vmin=-1, vmax=1)
        axes[row, col].set_xticks([]), axes[row, col].set_yticks([])
for row, name in enumerate(("hint", "ControlNet", "base")):
    axes[row, 0].set_ylabel(name, fontsize=8)
plt.show()
