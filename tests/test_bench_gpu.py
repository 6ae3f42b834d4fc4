"""The benchmark's GPU set on a CPU: its packages, its presets, its table, and the whole
``--preset gpu_smoke`` run (the code path of ``--preset gpu``, at toy sizes). No test here
asserts a time."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import config, profile
from experiments.bench.timing import make_rows, markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("ml_collections", "grain", "tensorflow_datasets", "diffusers", "torch")


def test_importing_the_benchmark_needs_no_optional_package():
    # The GPU image has jax, flax, optax and torch only; diffusers travels as wheels. Importing
    # every benchmark module with these blocked must work, and must not import torch.
    code = (
        "import sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        "import experiments.benchmark, experiments.bench.gpu, experiments.bench.sections\n"
        "import experiments.bench.flops, experiments.bench.jax_side, experiments.bench.timing\n"
        "import experiments.bench.attention, experiments.bench.profile\n"
        "import experiments.bench.config, experiments.bench.results\n"
        "print('imported')\n"
    )
    assert "imported" in run_python(code)


def test_benchmark_flags_are_registered_by_define_flags_only():
    code = (
        "from absl import flags\n"
        "import experiments.benchmark as b, experiments.fsdp_memory as f\n"
        "assert not {'preset', 'out', 'only', 'config', 'fsdp'} & set(flags.FLAGS)\n"
        "b.define_flags(); f.define_flags(); b.define_flags()\n"
        "assert {'preset', 'out', 'only', 'config', 'fsdp'} <= set(flags.FLAGS)\n"
        "print('defined')\n"
    )
    assert "defined" in run_python(code)


def run_python(code: str) -> str:
    """stdout of ``python -c code`` in the repository root; fails the test on an error."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_preset_defaults_yield_to_flags_given():
    values = {"batch": 32, "only": "train", "repeats": 5}
    got = config.flag_values("gpu", values, {"batch"})
    assert got["batch"] == 32  # given on the command line
    assert got["repeats"] == config.PRESETS["gpu"]["repeats"]
    assert got["only"] == ",".join(config.GPU_SECTIONS)
    assert config.flag_values(None, values, set()) == values


def test_table_with_mfu_memory_and_two_references():
    times = {"jax": [1.0], "eager": [2.0], "compiled": [1.0]}
    rows = make_rows("train", times, images_per_call=4, reference=("eager", "compiled"),
                     extra={"jax": {"peak_bytes": 2**30}, "eager": {"peak_bytes": None}})
    rows[0]["mfu"] = 0.25
    jax_row = rows[0]
    assert jax_row["vs"] == {"eager": 2.0, "compiled": 1.0} and jax_row["vs_reference"] == 2.0
    lines = markdown_table(rows).splitlines()
    assert lines[0].endswith("| MFU | peak GiB |")
    assert lines[2] == "| train | jax | 4.00 | 1.000 | 2.00x eager; 1.00x compiled | 25.0% | 1.00 |"
    assert lines[3].endswith("| - | - |")


def test_profile_summary_sums_kernels_per_call():
    events = [dict(name="sm90_xmma_gemm_bf16", dur=300.0), dict(name="loop_fusion", dur=50.0),
              dict(name="sm90_xmma_gemm_bf16", dur=100.0), dict(name="loop_fusion", dur=50.0)]
    got = profile.summarize(events, calls=2, top=1)
    assert got["busy_ms_per_call"] == pytest.approx(0.25)  # 500 us over 2 calls
    assert got["matmul_share"] == pytest.approx(0.8) and got["kernels_per_call"] == 2
    assert got["top_ops"] == [dict(name="sm90_xmma_gemm_bf16", ms_per_call=0.2, share=0.8,
                                   launches_per_call=1.0)]


def test_profile_traces_a_jitted_program():
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    got = profile.profile(lambda: f(x).block_until_ready(), calls=2, top=3)
    assert got["busy_ms_per_call"] > 0 and 1 <= len(got["top_ops"]) <= 3
    assert "profile" in profile.format_profile("tanh", got)


@pytest.mark.slow
def test_gpu_smoke_preset_writes_every_row(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    # Two host devices, so the DDIM scan's batch really is split over a mesh; a nominal 1
    # TFLOP/s peak, so the CPU gets an MFU figure (the device table has no CPUs).
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--preset", "gpu_smoke",
         "--peak_tflops", "1", "--profile_top", "5", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "gpu_smoke" and result["jax_device_count"] == 2
    variants = {(r["section"], r["variant"]) for r in result["rows"]}
    assert variants == {
        ("train UNet fp32", "jaxdiff fp32"), ("train UNet fp32", "PyTorch eager fp32"),
        ("train UNet fp32", "PyTorch torch.compile fp32"),
        ("train UNet bf16", "jaxdiff bf16"), ("train UNet bf16", "PyTorch eager bf16"),
        ("train UNet bf16", "PyTorch torch.compile bf16"),
        ("train DiT-S/2 depth 1 bf16", "jaxdiff bf16"),
        ("train DiT-S/2 depth 1 bf16", "PyTorch twin eager bf16"),
        ("sample DDIM-3 fp32", "jaxdiff one lax.scan, 2 device(s) fp32"),
        ("sample DDIM-3 fp32", "PyTorch diffusers DDIMScheduler loop fp32"),
    }
    for row in result["rows"]:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert math.isfinite(row["mfu"]) and row["mfu"] > 0
        assert row["model_flops_per_call"] > 0
        assert "peak_bytes" in row  # None on the CPU, bytes on a GPU
        if row["variant"].startswith("jaxdiff"):  # --profile_top: a trace of its calls
            prof = row["profile"]
            assert prof["busy_ms_per_call"] > 0 and 1 <= len(prof["top_ops"]) <= 5
            assert 0 <= prof["matmul_share"] <= 1
        else:
            assert "profile" not in row
        if row["section"].startswith("train UNet"):  # ratios to eager and torch.compile
            assert len(row["vs"]) == 2 and all(map(math.isfinite, row["vs"].values()))
    assert (tmp_path / "bench.md").read_text().count("\n") == len(result["rows"]) + 2
