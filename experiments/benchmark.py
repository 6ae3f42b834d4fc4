"""Side-by-side speed: jaxdiff against the same models in PyTorch, in ONE process.

    python -m experiments.benchmark --batch 32 --image_size 32 --repeats 5 --out bench.json
    python -m experiments.benchmark --only train,dit --xla_options xla_cpu_use_onednn=false
    python -m experiments.benchmark --preset gpu --out $OUT/bench_gpu.json
    python -m experiments.benchmark --preset gpu_smoke --peak_tflops 1 --out /tmp/smoke.json

Sections (``--only``, comma list, run in the order given): ``train``, ``sample``, ``dit``, ``canny`` (the CPU set,
``experiments.bench_sections``), ``attention`` (one attention fwd+bwd, jax vs PyTorch,
``experiments.bench_attention``) and ``unet_dtypes``, ``dit_mfu``, ``ddim_sharded`` (the GPU
set, ``experiments.bench_gpu``: UNet train fp32/bf16 vs PyTorch eager and
``torch.compile``, DiT-B/2 and DiT-XL/2 images/s and MFU, DDIM-50 as one sharded
``lax.scan`` vs the diffusers scheduler loop, peak device memory of each).

``--preset`` sets the defaults of a named set (``PRESETS``); flags given on the command line
still win. ``gpu`` is the whole GPU set, sized for one H200 in under 5 minutes; ``gpu_smoke``
is the same code path at toy sizes, for a CPU: no UNet attention (10 s of XLA:CPU compile
each), DiT-S/2 of depth 1, and ``torch.compile`` with the 'eager' backend (dynamo's graph
capture without inductor's code generation, which takes minutes on 2 cores).

Timing (``experiments.bench_timing``): everything is compiled/warmed up first (``--warmup``
calls, not timed); then the variants run interleaved, A B C A B C ..., ``--repeats`` times,
and the median is kept, so a shared box's load hits every variant alike. Optional extra jax
variants in the same rotation: ``--xla_options k=v,...``, the same program compiled with
these XLA options (``compile(compiler_options=...)``), so an option's effect is measured in
one process; where jaxdiff sets its own options (``jaxdiff.xla_options``, the CPU), XLA's
defaults are timed beside them.

On a box with more runnable threads than cores, PyTorch's OpenMP threads spin-wait and its
numbers collapse (10-100x on small ops); run with ``OMP_WAIT_POLICY=PASSIVE`` there (the
README's numbers do). The JSON records it with the versions, XLA_FLAGS and the command; it is
rewritten after every section, so a run cut short keeps what it measured.

Packages: jax, flax, optax, numpy and absl; torch and diffusers only for the sections that
time them (``canny`` needs neither). Nothing here imports ml_collections, grain or TFDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from typing import Any

import jax
from absl import app, flags

from experiments import bench_flops
from experiments.bench_jax import (
    check_param_counts,
    count_params,
    ddim_step_fn,
    ddim_timesteps,
    ddpm_step_fn,
    jax_train_callables,
    jax_train_setup,
    jax_variants,
    jit_with,
)
from experiments.bench_timing import (
    interleaved_times,
    make_rows,
    markdown_table,
    parse_ints,
    parse_names,
    parse_xla_options,
)

# Re-exported: the names tests and notebooks use as ``benchmark.<name>``.
__all__ = [
    "canny_callables", "check_param_counts", "count_params", "ddim_step_fn", "ddim_timesteps",
    "ddpm_step_fn", "interleaved_times", "jax_train_callables", "jax_train_setup",
    "jax_variants", "jit_with", "make_rows", "markdown_table", "parse_xla_options",
]

CPU_SECTIONS = ("train", "sample", "dit", "canny", "attention")
GPU_SECTIONS = ("unet_dtypes", "dit_mfu", "ddim_sharded")
SECTIONS = CPU_SECTIONS + GPU_SECTIONS

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

_PRESET = flags.DEFINE_enum("preset", None, list(PRESETS), "Defaults of a named set.")
flags.DEFINE_integer("batch", 32, "Batch size of the train steps.")
flags.DEFINE_integer("sample_batch", None, "Sampling batch (default --batch).")
flags.DEFINE_integer("image_size", 32, "Image height = width.")
flags.DEFINE_integer("in_channels", 3, "Image channels.")
flags.DEFINE_string("channels", "32,64,64", "UNet block_out_channels.")
flags.DEFINE_integer("layers_per_block", 2, "UNet layers_per_block.")
flags.DEFINE_string("attention_levels", "1,2", "UNet attention levels ('' none).")
flags.DEFINE_integer("norm_groups", 8, "UNet norm_num_groups.")
flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median kept).")
flags.DEFINE_integer("warmup", 1, "Untimed calls per variant after compiling.")
flags.DEFINE_string("only", ",".join(CPU_SECTIONS), f"Comma list of sections of {SECTIONS}.")
flags.DEFINE_integer("ddim_steps", 50, "DDIM steps.")
flags.DEFINE_integer(
    "ddpm_steps", 1000, "DDPM steps = T of its linear schedule (1000 as trained; fewer on "
    "slow CPUs: same per-step cost, images/s scales as 1000/N)."
)
flags.DEFINE_string("dit_size", "S", "DiT preset of the dit section (S, B, L, XL).")
flags.DEFINE_integer("dit_patch", 2, "DiT patch size.")
flags.DEFINE_string(
    "xla_options", "", "Also time jax compiled with these XLA options, e.g. "
    "'xla_cpu_use_onednn=false' (jaxdiff's CPU options without oneDNN dots)."
)
flags.DEFINE_bool(
    "xla_defaults", True, "Also time jax compiled with XLA's default options where jaxdiff "
    "sets its own (the CPU)."
)
flags.DEFINE_integer("canny_batch", 256, "Images per call of the canny section.")
flags.DEFINE_string("train_dtypes", "float32,bfloat16", "unet_dtypes: compute dtypes.")
flags.DEFINE_string("sample_dtypes", "float32", "ddim_sharded: compute dtypes.")
flags.DEFINE_string(
    "torch_compile", "auto", "unet_dtypes: torch.compile backend ('auto': inductor on CUDA, "
    "skipped on a CPU; '': skipped; 'eager': dynamo only)."
)
flags.DEFINE_string("dit_sizes", "B,XL", "dit_mfu: DiT presets.")
flags.DEFINE_string("dit_batches", "128,64", "dit_mfu: one batch per --dit_sizes entry.")
flags.DEFINE_integer("dit_image_size", 32, "dit_mfu: latent height = width.")
flags.DEFINE_integer("dit_in_channels", 4, "dit_mfu: latent channels.")
flags.DEFINE_integer("dit_depth", None, "dit_mfu: override the preset's depth (toy runs).")
flags.DEFINE_string("dit_dtype", "bfloat16", "dit_mfu: compute dtype.")
flags.DEFINE_float(
    "peak_tflops", None, "Chip peak (dense bf16 TFLOP/s) for MFU; default from "
    "experiments.bench_flops.PEAK_BF16_TFLOPS by device kind (none for CPUs)."
)
flags.DEFINE_integer(
    "profile_top", 0, "GPU sections: after timing, trace each jaxdiff variant with "
    "jax.profiler and report its top N device ops (0: no trace)."
)
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here (and .md beside it).")


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
        canny_batch=v["canny_batch"], train_dtypes=parse_names(v["train_dtypes"]),
        sample_dtypes=parse_names(v["sample_dtypes"]), torch_compile=torch_compile,
        dit_sizes=parse_names(v["dit_sizes"]), dit_batches=parse_ints(v["dit_batches"]),
        dit_image_size=v["dit_image_size"], dit_in_channels=v["dit_in_channels"],
        dit_depth=v["dit_depth"], dit_dtype=v["dit_dtype"], profile_top=v["profile_top"],
        peak_flops=bench_flops.peak_flops(jax.devices()[0].device_kind,
                                          override_tflops=v["peak_tflops"]),
    )


def environment() -> dict[str, Any]:
    """Device, versions, flags and command of this run, for the JSON (torch and diffusers
    versions when installed)."""
    import flax

    try:
        import diffusers
        import torch
    except ImportError:  # the canny section needs neither
        diffusers = torch = None

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    cuda = torch is not None and torch.cuda.is_available()
    return dict(
        device=f"{jax.devices()[0].platform}: {cpu}", jax=jax.__version__, flax=flax.__version__,
        jax_device_kind=jax.devices()[0].device_kind, jax_device_count=jax.device_count(),
        torch=torch and torch.__version__, diffusers=diffusers and diffusers.__version__,
        torch_cuda_device=torch.cuda.get_device_name() if cuda else None,
        torch_cuda=torch and torch.version.cuda,
        torch_float32_matmul_precision=torch and torch.get_float32_matmul_precision(),
        torch_threads=torch and torch.get_num_threads(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", ""),
        XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", ""),  # experiments/host_memory.py
        command="python -m experiments.benchmark " + " ".join(sys.argv[1:]),
        load_average=os.getloadavg(),
    )


def _section_fns():
    from experiments import bench_attention, bench_gpu, bench_sections

    return dict(
        attention=bench_attention.bench_attention,
        train=bench_sections.bench_train, sample=bench_sections.bench_sample,
        dit=bench_sections.bench_dit, canny=bench_sections.bench_canny,
        unet_dtypes=bench_gpu.bench_unet_dtypes, dit_mfu=bench_gpu.bench_dit_mfu,
        ddim_sharded=bench_gpu.bench_ddim_sharded,
    )


def canny_callables(images, *, low: float = 100.0, high: float = 200.0):
    """``bench_sections.canny_callables`` (imported on use)."""
    from experiments import bench_sections

    return bench_sections.canny_callables(images, low=low, high=high)


def write_results(path: str, result: dict[str, Any], table: str) -> None:
    """``path`` (JSON) and the markdown table beside it (.md)."""
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table + "\n")


def main(argv: list[str]) -> None:
    del argv
    # jax and PyTorch share the GPU: without this jax takes 75% of its memory at start, and
    # its peak_bytes_in_use would count the pool instead of what the programs used.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    given = {n for n in flags.FLAGS if flags.FLAGS[n].present}
    values = flag_values(_PRESET.value, {n: flags.FLAGS[n].value for n in flags.FLAGS}, given)
    cfg = make_config(values)
    variant_kw = dict(xla_options=parse_xla_options(values["xla_options"]),
                      xla_defaults=values["xla_defaults"])
    if any(s in GPU_SECTIONS for s in cfg["only"]):
        from experiments.bench_gpu import torch_setup

        torch_setup()  # before the environment records PyTorch's settings
    env = dict(environment(), preset=_PRESET.value)
    print(json.dumps(env))
    rows: list[dict[str, Any]] = []
    section_fns = _section_fns()
    for section in cfg["only"]:  # in the order given: a run cut short keeps the first
        start = time.perf_counter()
        new = section_fns[section](cfg, variant_kw)
        print(f"{section}: {time.perf_counter() - start:.0f} s")
        print(markdown_table(new), flush=True)
        rows += new
        if _OUT.value:
            write_results(_OUT.value, dict(env, config=cfg, rows=rows, **variant_kw),
                          markdown_table(rows))
    print(markdown_table(rows))
    if _OUT.value:
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
