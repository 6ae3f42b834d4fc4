"""Side-by-side speed: jaxdiff against the same models in PyTorch, in ONE process.

    python -m experiments.benchmark --batch 32 --image_size 32 --repeats 5 --out bench.json
    python -m experiments.benchmark --only train,dit --xla_options xla_cpu_use_onednn=false
    python -m experiments.benchmark --preset gpu --out bench_gpu.json
    python -m experiments.benchmark --preset gpu_smoke --peak_tflops 1 --out /tmp/smoke.json
    python -m experiments.benchmark --only fid_inception --image_size 32 --fid_batch 50

Sections (``--only``, comma list, run in the order given): ``train``, ``sample``, ``dit``,
``canny`` (the CPU set, ``experiments.bench.sections``), ``attention`` (one attention
fwd+bwd, jax vs PyTorch, ``experiments.bench.attention``) and ``unet_dtypes``, ``dit_mfu``,
``ddim_sharded`` (the GPU set, ``experiments.bench.gpu``: UNet train fp32/bf16 vs PyTorch
eager and ``torch.compile``, DiT-B/2 and DiT-XL/2 images/s and MFU, DDIM-50 as one sharded
``lax.scan`` vs the diffusers scheduler loop, peak device memory of each); and, only when
named, ``fid_inception`` (FID feature extraction, ``jaxdiff.fid`` vs pytorch-fid,
``experiments.bench.fid_inception``; docs/fid.md).

``--preset`` sets the defaults of a named set (``experiments.bench.config.PRESETS``); flags
given on the command line still win. ``gpu`` is the whole GPU set, sized for one H200 in
under 5 minutes; ``gpu_smoke`` is the same code path at toy sizes, for a CPU: no UNet
attention (10 s of XLA:CPU compile each), DiT-S/2 of depth 1, and ``torch.compile`` with the
'eager' backend (dynamo's graph capture without inductor's code generation, which takes
minutes on 2 cores).

Timing (``experiments.bench.timing``): everything is compiled/warmed up first (``--warmup``
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

import json
import os
import time
from typing import Any

from absl import app, flags

from experiments.bench.config import (
    CPU_SECTIONS,
    GPU_SECTIONS,
    PRESETS,
    SECTIONS,
    flag_values,
    make_config,
    section_fns,
)
from experiments.bench.results import environment, write_results
from experiments.bench.timing import markdown_table, parse_xla_options
from experiments.runtime.flag_defs import define


def define_flags() -> None:
    """Registers the benchmark's flags (those another CLI registered already are shared)."""

    define(flags.DEFINE_enum, "preset", None, list(PRESETS), "Defaults of a named set.")
    define(flags.DEFINE_integer, "batch", 32, "Batch size of the train steps.")
    define(flags.DEFINE_integer, "sample_batch", None, "Sampling batch (default --batch).")
    define(flags.DEFINE_integer, "image_size", 32, "Image height = width.")
    define(flags.DEFINE_integer, "in_channels", 3, "Image channels.")
    define(flags.DEFINE_string, "channels", "32,64,64", "UNet block_out_channels.")
    define(flags.DEFINE_integer, "layers_per_block", 2, "UNet layers_per_block.")
    define(flags.DEFINE_string, "attention_levels", "1,2", "UNet attention levels ('' none).")
    define(flags.DEFINE_integer, "norm_groups", 8, "UNet norm_num_groups.")
    define(flags.DEFINE_integer, "repeats", 5, "Timed calls per variant (median kept).")
    define(flags.DEFINE_integer, "warmup", 1, "Untimed calls per variant after compiling.")
    define(flags.DEFINE_string, "only", ",".join(CPU_SECTIONS),
        f"Comma list of sections of {SECTIONS}.")
    define(flags.DEFINE_integer, "ddim_steps", 50, "DDIM steps.")
    define(flags.DEFINE_integer, "ddpm_steps", 1000, "DDPM steps = T of its linear schedule "
        "(1000 as trained; fewer on slow CPUs: same per-step cost, images/s scales as "
        "1000/N).")
    define(flags.DEFINE_string, "dit_size", "S", "DiT preset of the dit section (S, B, L, XL).")
    define(flags.DEFINE_integer, "dit_patch", 2, "DiT patch size.")
    define(flags.DEFINE_string, "xla_options", "", "Also time jax compiled with these XLA "
        "options, e.g. 'xla_cpu_use_onednn=false' (jaxdiff's CPU options without oneDNN "
        "dots).")
    define(flags.DEFINE_bool, "xla_defaults", True, "Also time jax compiled with XLA's "
        "default options where jaxdiff sets its own (the CPU).")
    define(flags.DEFINE_integer, "canny_batch", 256, "Images per call of the canny section.")
    define(flags.DEFINE_integer, "fid_batch", 50, "Images per call of the fid_inception section.")
    define(flags.DEFINE_string, "train_dtypes", "float32,bfloat16",
        "unet_dtypes: compute dtypes.")
    define(flags.DEFINE_string, "sample_dtypes", "float32", "ddim_sharded: compute dtypes.")
    define(flags.DEFINE_string, "torch_compile", "auto", "unet_dtypes: torch.compile backend "
        "('auto': inductor on CUDA, skipped on a CPU; '': skipped; 'eager': dynamo only).")
    define(flags.DEFINE_string, "dit_sizes", "B,XL", "dit_mfu: DiT presets.")
    define(flags.DEFINE_string, "dit_batches", "128,64",
        "dit_mfu: one batch per --dit_sizes entry.")
    define(flags.DEFINE_integer, "dit_image_size", 32, "dit_mfu: latent height = width.")
    define(flags.DEFINE_integer, "dit_in_channels", 4, "dit_mfu: latent channels.")
    define(flags.DEFINE_integer, "dit_depth", None,
        "dit_mfu: override the preset's depth (toy runs).")
    define(flags.DEFINE_string, "dit_dtype", "bfloat16", "dit_mfu: compute dtype.")
    define(flags.DEFINE_float, "peak_tflops", None, "Chip peak (dense bf16 TFLOP/s) for MFU; "
        "default from experiments.bench.flops.PEAK_BF16_TFLOPS by device kind (none for "
        "CPUs).")
    define(flags.DEFINE_integer, "profile_top", 0, "GPU sections: after timing, trace each "
        "jaxdiff variant with jax.profiler and report its top N device ops (0: no trace).")
    define(flags.DEFINE_string, "out", None, "Write the results as JSON here (and .md beside it).")


def main(argv: list[str]) -> None:
    del argv
    # jax and PyTorch share the GPU: without this jax takes 75% of its memory at start, and
    # its peak_bytes_in_use would count the pool instead of what the programs used.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    preset, out = flags.FLAGS.preset, flags.FLAGS.out
    given = {n for n in flags.FLAGS if flags.FLAGS[n].present}
    values = flag_values(preset, {n: flags.FLAGS[n].value for n in flags.FLAGS}, given)
    cfg = make_config(values)
    variant_kw = dict(xla_options=parse_xla_options(values["xla_options"]),
                      xla_defaults=values["xla_defaults"])
    if any(s in GPU_SECTIONS for s in cfg["only"]):
        from experiments.bench.gpu import torch_setup

        torch_setup()  # before the environment records PyTorch's settings
    env = dict(environment(), preset=preset)
    print(json.dumps(env))
    rows: list[dict[str, Any]] = []
    fns = section_fns()
    for section in cfg["only"]:  # in the order given: a run cut short keeps the first
        start = time.perf_counter()
        new = fns[section](cfg, variant_kw)
        print(f"{section}: {time.perf_counter() - start:.0f} s")
        print(markdown_table(new), flush=True)
        rows += new
        if out:
            write_results(out, dict(env, config=cfg, rows=rows, **variant_kw),
                          markdown_table(rows))
    print(markdown_table(rows))
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
