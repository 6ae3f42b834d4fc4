"""experiments.benchmark's GPU sections (``--preset gpu``; ``--preset gpu_smoke`` runs the same
code at toy sizes on a CPU). Each row carries ``mfu`` (model FLOPs / s over the chip's dense
bf16 peak, ``experiments.bench.flops``) and ``peak_bytes`` (device memory; None on a CPU).

* ``unet_dtypes``: the UNet train step (``experiments.bench.sections``' recipe) once per
  ``--train_dtypes`` entry: jaxdiff's ``UNet(dtype=...)`` (params float32) against diffusers'
  ``UNet2DModel`` in PyTorch eager and under ``torch.compile`` (bf16: ``torch.autocast``),
  interleaved per dtype; ratios against both PyTorch variants.
* ``dit_mfu``: DiT train steps of ``--dit_sizes`` (e.g. B,XL with ``--dit_batches`` 128,64) in
  ``--dit_dtype``, images/s and MFU from ``flops.dit_forward_flops`` x3, beside the
  PyTorch twin (``experiments.bench.torch_dit``, eager, autocast) at the same size.
* ``ddim_sharded``: DDIM-``--ddim_steps`` sampling throughput: jaxdiff's one ``lax.scan``
  with the batch split over a ``Mesh`` of every device (``samplers.ddim(mesh=...)``) against
  the diffusers ``DDIMScheduler`` loop, per ``--sample_dtypes`` entry.

With ``--profile_top N`` each jaxdiff row also carries ``profile``: its busy device time per
call by kernel (the top N), and the share of it in matrix-unit kernels
(``experiments.bench.profile``), printed to the log as well.

PyTorch's float32 matmuls may use TF32 (``set_float32_matmul_precision('high')``), as
jax's default precision does on GPUs; the JSON records both settings.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.flops import dit_forward_flops, matmul_flops, mfu, train_step_flops
from experiments.bench.jax_side import (
    NUM_TIMESTEPS,
    check_param_counts,
    count_params,
    init_params,
    jax_train_callables,
    jax_train_setup,
    jax_variants,
    jit_with,
)
from experiments.bench.profile import format_profile, profile
from experiments.bench.sections import torch_sampler, torch_train_fn, unet_pair
from experiments.bench.timing import first_call_peaks, interleaved_times, make_rows
from jaxdiff import samplers, schedules
from jaxdiff.train import data_sharding, make_mesh, replicate

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def torch_setup() -> None:
    """PyTorch's float32 matmuls may use TF32 on CUDA, as jax's default precision does."""
    import torch

    torch.set_float32_matmul_precision("high")


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(name: str):
    import torch

    return None if name == "float32" else getattr(torch, name)


def _check_dtype(name: str) -> None:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")


def _timed_rows(
    section: str, fns: dict, *, torch_variants: list[str], images_per_call: int, cfg: dict,
    reference, flops_per_call: float | None, peak: float | None, fields: dict[str, Any],
) -> list[dict[str, Any]]:
    """Warm-up call with peak memory, interleaved timing, rows with MFU and the fields."""
    extra = first_call_peaks(fns, torch_variants=torch_variants)
    times = interleaved_times(fns, repeats=cfg["repeats"], warmup=max(cfg["warmup"] - 1, 0))
    rows = make_rows(section, times, images_per_call=images_per_call, reference=reference,
                     extra={k: dict(v, **fields) for k, v in extra.items()})
    for row in rows:
        row["model_flops_per_call"] = flops_per_call
        row["mfu"] = None if flops_per_call is None else mfu(
            flops_per_step=flops_per_call, seconds_per_step=row["median_s"], peak=peak)
        if cfg.get("profile_top") and row["variant"].startswith("jaxdiff"):
            row["profile"] = profile(fns[row["variant"]], calls=cfg["repeats"],
                                     top=cfg["profile_top"])
            print(format_profile(f"{section} {row['variant']}", row["profile"]), flush=True)
    return rows


def bench_unet_dtypes(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    device = torch_device()
    model, params, twin = unet_pair(cfg, device=device)
    b, s, c = cfg["batch"], cfg["image_size"], cfg["in_channels"]
    images = np.random.default_rng(0).uniform(-1, 1, (b, s, s, c)).astype(np.float32)
    images_torch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    x, t = jnp.asarray(images[:1]), jnp.zeros((1,), jnp.int32)
    forward = matmul_flops(lambda p: model.apply({"params": p}, x, t), params)
    flops = train_step_flops(forward) * b
    rows = []
    for dtype in cfg["train_dtypes"]:
        _check_dtype(dtype)
        short = SHORT[dtype]
        step, state, batch = jax_train_setup(model.clone(dtype=DTYPES[dtype]), params,
                                             {"image": images})
        fns = {f"{k} {short}": v for k, v in jax_train_callables(
            step, state, batch, **variant_kw).items()}
        eager, compiled = copy.deepcopy(twin), copy.deepcopy(twin)
        names = [f"PyTorch eager {short}"]
        fns[names[0]] = torch_train_fn(eager, lambda x, t, _, m=eager: m(x, t).sample,
                                       images_torch, autocast_dtype=_torch_dtype(dtype))
        if cfg["torch_compile"]:
            names.append(f"PyTorch torch.compile {short}")
            net = torch.compile(compiled, backend=cfg["torch_compile"])
            fns[names[1]] = torch_train_fn(compiled, lambda x, t, _, m=net: m(x, t).sample,
                                           images_torch, autocast_dtype=_torch_dtype(dtype))
        rows += _timed_rows(
            f"train UNet {short}", fns, torch_variants=names, images_per_call=b, cfg=cfg,
            reference=tuple(names), flops_per_call=flops, peak=cfg["peak_flops"],
            fields=dict(dtype=dtype, batch=b),
        )
    return rows


def bench_dit_mfu(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch

    from experiments.bench.torch_dit import TorchDiT
    from jaxdiff.models.dit import DiT, dit_config

    dtype = cfg["dit_dtype"]
    _check_dtype(dtype)
    device, num_classes = torch_device(), 1000
    s, c = cfg["dit_image_size"], cfg["dit_in_channels"]
    if len(cfg["dit_batches"]) != len(cfg["dit_sizes"]):
        raise ValueError("--dit_batches needs one batch per entry of --dit_sizes")
    rows = []
    for size, b in zip(cfg["dit_sizes"], cfg["dit_batches"], strict=True):
        arch = dit_config(size, patch_size=cfg["dit_patch"])
        if cfg["dit_depth"]:
            arch["depth"] = cfg["dit_depth"]  # toy runs only; the label says so
        label = f"DiT-{size}/{cfg['dit_patch']}" + (f" depth {arch['depth']}"
                                                    if cfg["dit_depth"] else "")
        model = DiT(**arch, num_classes=num_classes, dtype=DTYPES[dtype])
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32)
        labels = rng.integers(0, num_classes, (b,)).astype(np.int32)
        params = init_params(model, jnp.asarray(images[:1]), jnp.zeros((1,), jnp.int32),
                             jnp.asarray(labels[:1]))
        torch.manual_seed(0)
        twin = TorchDiT(**arch, in_channels=c, input_size=s, num_classes=num_classes).to(device)
        check_param_counts(label, count_params(params),
                           sum(p.numel() for p in twin.parameters()))
        flops = b * train_step_flops(dit_forward_flops(
            depth=arch["depth"], hidden_size=arch["hidden_size"],
            patch_size=arch["patch_size"], image_size=s, in_channels=c))
        step, state, batch = jax_train_setup(model, params, {"image": images, "label": labels})
        short = SHORT[dtype]
        fns = {f"{k} {short}": v for k, v in jax_train_callables(
            step, state, batch, **variant_kw).items()}
        torch_name = f"PyTorch twin eager {short}"
        fns[torch_name] = torch_train_fn(
            twin, twin, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
            torch.from_numpy(labels).long().to(device), autocast_dtype=_torch_dtype(dtype))
        rows += _timed_rows(
            f"train {label} {short}", fns, torch_variants=[torch_name], images_per_call=b,
            cfg=cfg, reference=torch_name, flops_per_call=flops, peak=cfg["peak_flops"],
            fields=dict(dtype=dtype, batch=b, image_shape=(s, s, c)),
        )
        del params, state, batch, fns, twin
    return rows


def bench_ddim_sharded(cfg: dict[str, Any], variant_kw: dict) -> list[dict[str, Any]]:
    import torch
    from diffusers import DDIMScheduler

    device = torch_device()
    model, params, twin = unet_pair(cfg, device=device)
    twin.eval()
    mesh = make_mesh()
    b, s, c, n = cfg["sample_batch"], cfg["image_size"], cfg["in_channels"], cfg["ddim_steps"]
    if b % mesh.size:
        raise ValueError(f"--sample_batch={b} must be divisible by the {mesh.size} devices")
    shape = (b, s, s, c)
    schedule = schedules.linear(NUM_TIMESTEPS)
    key = jax.random.key(0)
    x_init = jax.device_put(jax.random.normal(key, shape), data_sharding(mesh))
    params = replicate(params, mesh)
    x1, t1 = jnp.zeros((1, s, s, c)), jnp.zeros((1,), jnp.int32)
    flops = n * b * matmul_flops(lambda p: model.apply({"params": p}, x1, t1), params)
    x_torch = torch.from_numpy(np.array(x_init)).permute(0, 3, 1, 2).contiguous().to(device)
    rows = []
    for dtype in cfg["sample_dtypes"]:
        _check_dtype(dtype)
        short, net = SHORT[dtype], model.clone(dtype=DTYPES[dtype])

        def sample(p, k, x0, net=net):
            denoise = lambda x, t, cond: net.apply({"params": p}, x, t, cond)  # noqa: E731
            return samplers.ddim(denoise, schedule, k, shape, num_steps=n, initial_noise=x0,
                                 mesh=mesh)[0]

        fns = {}
        for vname, compiled in jax_variants(jit_with(sample), (params, key, x_init),
                                            **variant_kw).items():
            def run(compiled=compiled):
                return jax.block_until_ready(compiled(params, key, x_init))

            run.compiled = compiled
            fns[f"{vname} one lax.scan, {mesh.size} device(s) {short}"] = run
        torch_name = f"PyTorch diffusers DDIMScheduler loop {short}"
        scheduler = DDIMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_schedule="linear",
                                  beta_start=1e-4, beta_end=0.02, clip_sample=True)
        fns[torch_name] = torch_sampler(twin, scheduler, n, x_torch,
                                        autocast_dtype=_torch_dtype(dtype))
        rows += _timed_rows(
            f"sample DDIM-{n} {short}", fns, torch_variants=[torch_name], images_per_call=b,
            cfg=cfg, reference=torch_name, flops_per_call=flops, peak=cfg["peak_flops"],
            fields=dict(dtype=dtype, batch=b, devices=mesh.size),
        )
    return rows
