"""The benchmark's sections, presets and config: flag values in, the sections' config out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from experiments.bench.flops import peak_flops
from experiments.bench.timing import parse_ints, parse_names

CPU_SECTIONS = ("train", "sample", "dit", "canny", "attention")
GPU_SECTIONS = ("unet_dtypes", "dit_mfu", "ddim_sharded")
# Not in the default set: needs pytorch-fid, and its Inception runs at 299x299.
EXTRA_SECTIONS = ("fid_inception",)
SECTIONS = CPU_SECTIONS + GPU_SECTIONS + EXTRA_SECTIONS

# Flag defaults per preset (as strings/ints, as typed on the command line).
# gpu: the UNet is DDPM's 64x64 layout (Ho et al. 2020, app. B: channels 128-256-256-256,
# 2 res blocks per level, attention at 16x16, GroupNorm 32), batch 64 to train, 256 to
# sample; DiT-B/2 and DiT-XL/2 on 32x32x4 latents (256 tokens, the paper's 256x256 setting)
# at batches 128 and 64 (XL/2 at 64 without remat uses ~50 GB).
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": dict(
        only=",".join(GPU_SECTIONS), batch=64, sample_batch=256, image_size=64, in_channels=3,
        channels="128,256,256,256", layers_per_block=2, attention_levels="2",
        norm_groups=32, repeats=5, warmup=2, ddim_steps=50, train_dtypes="float32,bfloat16",
        sample_dtypes="float32", torch_compile="auto", dit_sizes="B,XL",
        dit_batches="128,64", dit_image_size=32, dit_in_channels=4, dit_dtype="bfloat16",
    ),
    "gpu_smoke": dict(
        only=",".join(GPU_SECTIONS), batch=2, sample_batch=2, image_size=8, in_channels=3,
        channels="8,16", layers_per_block=1, attention_levels="", norm_groups=4, repeats=1,
        warmup=1, ddim_steps=3, train_dtypes="float32,bfloat16", sample_dtypes="float32",
        torch_compile="eager", dit_sizes="S", dit_batches="2", dit_image_size=8,
        dit_in_channels=4, dit_depth=1, dit_dtype="bfloat16", xla_defaults=False,
    ),
}


def flag_values(preset: str | None, values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """``values`` (flag name -> value) with the preset's defaults for flags not in ``given``."""
    chosen = PRESETS[preset] if preset else {}
    return {**values, **{k: v for k, v in chosen.items() if k not in given}}


def make_config(v: dict[str, Any]) -> dict[str, Any]:
    """The sections' config from flag values (strings parsed; torch_compile 'auto' resolved;
    peak_flops from the device kind or --peak_tflops)."""
    only = parse_names(v["only"])
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--only takes a comma list of {SECTIONS}, got unknown {unknown}")
    torch_compile = v["torch_compile"]
    if torch_compile == "auto":
        torch_compile = "inductor" if jax.default_backend() == "gpu" else ""
    return dict(
        only=only, batch=v["batch"], sample_batch=v["sample_batch"] or v["batch"],
        image_size=v["image_size"], in_channels=v["in_channels"],
        channels=parse_ints(v["channels"]), layers_per_block=v["layers_per_block"],
        attention_levels=parse_ints(v["attention_levels"]), norm_groups=v["norm_groups"],
        repeats=v["repeats"], warmup=v["warmup"], ddim_steps=v["ddim_steps"],
        ddpm_steps=v["ddpm_steps"], dit_size=v["dit_size"], dit_patch=v["dit_patch"],
        canny_batch=v["canny_batch"], fid_batch=v["fid_batch"],
        train_dtypes=parse_names(v["train_dtypes"]),
        sample_dtypes=parse_names(v["sample_dtypes"]), torch_compile=torch_compile,
        dit_sizes=parse_names(v["dit_sizes"]), dit_batches=parse_ints(v["dit_batches"]),
        dit_image_size=v["dit_image_size"], dit_in_channels=v["dit_in_channels"],
        dit_depth=v["dit_depth"], dit_dtype=v["dit_dtype"], profile_top=v["profile_top"],
        peak_flops=peak_flops(jax.devices()[0].device_kind, override_tflops=v["peak_tflops"]),
    )


def section_fns() -> dict[str, Callable[[dict[str, Any], dict], list[dict[str, Any]]]]:
    """Section name -> ``fn(cfg, variant_kw) -> rows`` (the section modules imported here, on
    use)."""
    from experiments.bench import attention, fid_inception, gpu, sections

    return dict(
        attention=attention.bench_attention,
        train=sections.bench_train, sample=sections.bench_sample,
        dit=sections.bench_dit, canny=sections.bench_canny,
        unet_dtypes=gpu.bench_unet_dtypes, dit_mfu=gpu.bench_dit_mfu,
        ddim_sharded=gpu.bench_ddim_sharded, fid_inception=fid_inception.bench_fid_inception,
    )
