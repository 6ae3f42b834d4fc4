"""experiments.benchmark's CPU sections: train, sample, dit (need torch + diffusers:
``pip install -r requirements-bench.txt``) and canny (needs no torch).

* ``train``: images/s of one optimizer step. jaxdiff's ``UNet`` with the real
  ``make_denoising_loss`` (eps, DDPM eq. 14) + ``make_optimizer`` (clip, AdamW, EMA) +
  ``make_train_step``, against diffusers' ``UNet2DModel`` built from ``diffusers_kwargs`` with
  the same loss, t ~ U{0..T-1}, ``torch.optim.AdamW``, ``clip_grad_norm_`` and an EMA lerp.
  The parameter counts must match (else the run stops).
* ``sample``: images/s of DDIM-50 and DDPM (``--ddpm_steps``): jaxdiff's one-``lax.scan``
  samplers, the same jax model stepped by a Python loop of one jitted step, and the
  diffusers model stepped by ``DDIMScheduler`` / ``DDPMScheduler`` under ``inference_mode``.
* ``dit``: images/s of a DiT train step (``--dit_size``/``--dit_patch``, class labels)
  against ``experiments.bench.torch_dit.TorchDiT``, a PyTorch twin with the same parameter
  count.
* ``canny``: images/s of ``jaxdiff.hints.canny_jax`` jit-compiled on a batch of
  ``--canny_batch`` MNIST test digits (../shared/data/mnist; random shapes when absent)
  against a Python loop of ``cv2.Canny`` over the same images (thresholds 100/200).

The torch helpers (``unet_pair``, ``torch_train_fn``, ``torch_sampler``) serve the GPU
sections (``experiments.bench.gpu``) too: they run on the device of the tensors given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.jax_side import (
    EMA_DECAY,
    GRAD_CLIP,
    LEARNING_RATE,
    NUM_TIMESTEPS,
    check_param_counts,
    count_params,
    ddim_step_fn,
    ddim_timesteps,
    ddpm_step_fn,
    init_params,
    jax_train_callables,
    jax_train_setup,
    jax_variants,
    jit_with,
)
from experiments.bench.timing import interleaved_times, make_rows
from jaxdiff import samplers, schedules


def unet_pair(cfg: dict[str, Any], *, device: str = "cpu"):
    """(jaxdiff ``UNet``, its float32 params, diffusers ``UNet2DModel`` twin on ``device``) of
    the architecture in ``cfg``; stops the run unless the parameter counts match."""
    import torch
    from diffusers import UNet2DModel

    from jaxdiff.models.unet import UNet, diffusers_kwargs

    model = UNet(
        block_out_channels=cfg["channels"], layers_per_block=cfg["layers_per_block"],
        attention_levels=cfg["attention_levels"], norm_num_groups=cfg["norm_groups"],
    )
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    x = jnp.zeros((b, s, s, c))
    params = init_params(model, x, jnp.zeros((b,), jnp.int32))
    torch.manual_seed(0)
    twin = UNet2DModel(**diffusers_kwargs(model, in_channels=c, sample_size=s)).to(device)
    n_torch = sum(p.numel() for p in twin.parameters())
    check_param_counts("UNet", count_params(params), n_torch)
    return model, params, twin


def torch_train_fn(
    net: Any, forward: Callable, images, labels=None, *, autocast_dtype=None
) -> Callable[[], None]:
    """One PyTorch step with the jaxdiff recipe: t ~ U{0..T-1}, eps ~ N(0, I), x_t by DDPM
    eq. 4, MSE on eps, AdamW, clip_grad_norm_, EMA lerp. Runs on ``images``' device (CUDA:
    synchronised at the end, so the call blocks); ``autocast_dtype`` (e.g. torch.bfloat16)
    runs the forward under ``torch.autocast``, params and loss staying float32."""
    import torch

    device = images.device
    alpha_bars = torch.tensor(np.asarray(schedules.linear(NUM_TIMESTEPS).alpha_bars)).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    net.train()

    def step():
        t = torch.randint(0, NUM_TIMESTEPS, (images.shape[0],), device=device)
        noise = torch.randn_like(images)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * images + (1 - ab).sqrt() * noise
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = forward(x_t, t, labels)
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def bench_train(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    model, params, twin = unet_pair(cfg)
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    images = np.random.default_rng(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)
    step, state, batch = jax_train_setup(model, params, {"image": images})
    fns = jax_train_callables(step, state, batch, **variant_kw)
    fns["PyTorch (diffusers UNet2DModel)"] = torch_train_fn(
        twin, lambda x, t, _: twin(x, t).sample, torch.from_numpy(images).permute(0, 3, 1, 2)
    )
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows("train UNet", times, images_per_call=b,
                     reference="PyTorch (diffusers UNet2DModel)")


def bench_sample(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler

    model, params, twin = unet_pair(cfg)
    twin.eval()
    b, s, c = cfg["sample_batch"], cfg["image_size"], cfg["in_channels"]
    shape = (b, s, s, c)
    schedule = schedules.linear(NUM_TIMESTEPS)
    key = jax.random.key(0)
    x_init = jax.random.normal(key, shape)
    denoise = lambda p: lambda x, t, cond: model.apply({"params": p}, x, t, cond)  # noqa: E731
    sched_kw = dict(num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear",
                    beta_start=1e-4, beta_end=0.02, clip_sample=True)
    rows = []
    for name, num_steps in (("DDIM", cfg["ddim_steps"]), ("DDPM", cfg["ddpm_steps"])):
        if name == "DDIM":
            scan = jit_with(lambda p, k, n=num_steps: samplers.ddim(
                denoise(p), schedule, k, shape, num_steps=n, initial_noise=x_init)[0])
            one_step = ddim_step_fn(model.apply, schedule)
            pairs = list(zip(*ddim_timesteps(NUM_TIMESTEPS, num_steps), strict=True))
            loop_args = [(jnp.int32(t), jnp.int32(tp)) for t, tp in pairs]
            scheduler = DDIMScheduler(**sched_kw)
        else:
            # DDPM walks every step of its schedule; --ddpm_steps < 1000 gives both sides a
            # T = ddpm_steps linear schedule: the same per-step cost, a shorter chain.
            ddpm_schedule = schedules.linear(num_steps)
            scan = jit_with(lambda p, k, sch=ddpm_schedule: samplers.ddpm(
                denoise(p), sch, k, shape, initial_noise=x_init)[0])
            one_step = ddpm_step_fn(model.apply, ddpm_schedule)
            step_key = jax.random.split(key)[1]
            loop_args = [(jnp.int32(t), step_key) for t in range(num_steps - 1, -1, -1)]
            scheduler = DDPMScheduler(**dict(sched_kw, num_train_timesteps=num_steps))
        fns = {}
        for vname, compiled in jax_variants(scan, (params, key), **variant_kw).items():
            fns[f"{vname} {name} one lax.scan"] = (
                lambda compiled=compiled: jax.block_until_ready(compiled(params, key)))
        compiled_step = one_step.lower(params, x_init, *loop_args[0]).compile()

        def python_loop(compiled_step=compiled_step, loop_args=loop_args):
            x = x_init
            for args in loop_args:
                x = compiled_step(params, x, *args)
            jax.block_until_ready(x)

        fns[f"jaxdiff {name} Python loop of jitted steps"] = python_loop
        fns[f"PyTorch {name} diffusers scheduler loop"] = torch_sampler(
            twin, scheduler, num_steps, torch.from_numpy(np.array(x_init)).permute(0, 3, 1, 2)
        )
        times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
        rows += make_rows(f"sample {name}-{num_steps}", times, images_per_call=b,
                          reference=f"PyTorch {name} diffusers scheduler loop")
    return rows


def torch_sampler(
    twin, scheduler, num_steps: int, x_init, *, autocast_dtype=None
) -> Callable[[], None]:
    """Blocking call: a diffusers scheduler loop of ``num_steps`` from ``x_init`` (NCHW, on
    the twin's device) under ``inference_mode`` (and ``torch.autocast`` when given)."""
    import torch

    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps
    device = x_init.device

    def run():
        with torch.inference_mode(), torch.autocast(
            device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            x = x_init.clone()
            for t in timesteps:
                x = scheduler.step(twin(x, t).sample.float(), t, x).prev_sample
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def bench_dit(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    from experiments.bench.torch_dit import TorchDiT
    from jaxdiff.models.dit import DiT, dit_config

    num_classes = 10
    arch = dit_config(cfg["dit_size"], patch_size=cfg["dit_patch"])
    model = DiT(**arch, num_classes=num_classes)
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32)
    labels = rng.integers(0, num_classes, (b,)).astype(np.int32)
    params = init_params(model, jnp.asarray(images), jnp.zeros((b,), jnp.int32),
                         jnp.asarray(labels))
    torch.manual_seed(0)
    twin = TorchDiT(**arch, in_channels=c, input_size=s, num_classes=num_classes)
    label = f"DiT-{cfg['dit_size']}/{cfg['dit_patch']}"
    check_param_counts(label, count_params(params), sum(p.numel() for p in twin.parameters()))
    step, state, batch = jax_train_setup(model, params, {"image": images, "label": labels})
    fns = jax_train_callables(step, state, batch, **variant_kw)
    fns[f"PyTorch {label} twin"] = torch_train_fn(
        twin, twin, torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long()
    )
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows(f"train {label}", times, images_per_call=b,
                     reference=f"PyTorch {label} twin")


def canny_callables(images: np.ndarray, *, low: float = 100.0, high: float = 200.0):
    """{'jax canny (jit)': ..., 'cv2.Canny loop': ...}: blocking calls over the same uint8
    images (N, H, W, 1); the jax one compiled here, before any timing."""
    from jaxdiff import hints

    x = jnp.asarray(images.astype(np.float32) / 127.5 - 1.0)
    edges = jax.jit(lambda a: hints.canny_jax(a, low=low, high=high))
    edges(x).block_until_ready()
    return {
        "jax canny (jit)": lambda: edges(x).block_until_ready(),
        "cv2.Canny loop": lambda: hints.canny(images, low=low, high=high),
    }


def bench_canny(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    del variant_kw
    from jaxdiff import sources

    n = cfg["canny_batch"]
    mnist = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
    try:
        images = sources.load_idx(mnist, split="test").images[:n]
    except FileNotFoundError:
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    fns = canny_callables(np.ascontiguousarray(images))
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=cfg["warmup"])
    return make_rows("canny", times, images_per_call=len(images), reference="cv2.Canny loop")
