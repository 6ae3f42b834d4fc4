"""experiments.bench.flops: the DiT FLOP formula against an exact count, the peak table, MFU."""

import math

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import flops as bench_flops
from jaxdiff.models.dit import DiT


@pytest.mark.parametrize("kw", [
    dict(depth=1, hidden_size=32, num_heads=4, patch_size=2, image=8, channels=2, out=None),
    dict(depth=2, hidden_size=16, num_heads=2, patch_size=4, image=8, channels=3, out=5),
])
def test_dit_formula_equals_the_matmuls_of_the_traced_model(kw):
    # Counted exactly from the jaxpr: every dot_general and the patch conv, the CPU's grouped
    # attention scan multiplied by its length. Per image, so the batch-2 count is halved.
    model = DiT(depth=kw["depth"], hidden_size=kw["hidden_size"], num_heads=kw["num_heads"],
                patch_size=kw["patch_size"], num_classes=3, out_channels=kw["out"])
    x = jnp.zeros((2, kw["image"], kw["image"], kw["channels"]))
    t = jnp.zeros((2,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, t)["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    counted = bench_flops.matmul_flops(lambda p: model.apply({"params": p}, x, t, t), params)
    formula = bench_flops.dit_forward_flops(
        depth=kw["depth"], hidden_size=kw["hidden_size"], patch_size=kw["patch_size"],
        image_size=kw["image"], in_channels=kw["channels"], out_channels=kw["out"])
    assert counted == 2 * formula


def test_dit_xl2_forward_matches_the_paper():
    # Peebles & Xie 2023, table 4: DiT-XL/2 at 256x256 (32x32x4 latents) is 118.6 Gflops,
    # counted as multiply-adds; ours counts 2 FLOPs per multiply-add.
    flops = bench_flops.dit_forward_flops(depth=28, hidden_size=1152, patch_size=2,
                                          image_size=32, in_channels=4)
    assert flops / 2 / 1e9 == pytest.approx(118.6, rel=0.01)
    assert bench_flops.train_step_flops(flops) == 3 * flops


def test_matmul_flops_counts_dots_convs_and_scans():
    a, b = jnp.zeros((3, 4, 5)), jnp.zeros((3, 5, 6))
    assert bench_flops.matmul_flops(lambda a, b: a @ b, a, b) == 2 * 3 * 4 * 5 * 6
    img, kernel = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 7))
    conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert bench_flops.matmul_flops(conv, img, kernel) == 2 * (2 * 8 * 8 * 7) * (3 * 3 * 3)
    m = jnp.zeros((4, 4))
    scanned = lambda m: jax.lax.scan(lambda c, _: (c @ m, None), m, length=5)[0]  # noqa: E731
    assert bench_flops.matmul_flops(scanned, m) == 5 * 2 * 4**3


def test_peak_table_and_mfu():
    assert bench_flops.peak_flops("NVIDIA H200") == 989e12
    assert bench_flops.peak_flops("NVIDIA H100 PCIe") == 756e12  # the longest key wins
    assert bench_flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench_flops.peak_flops("cpu") is None
    assert bench_flops.peak_flops("cpu", override_tflops=2.0) == 2e12
    assert math.isclose(bench_flops.mfu(flops_per_step=4e12, seconds_per_step=2.0, peak=4e12),
                        0.5)
    assert bench_flops.mfu(flops_per_step=1.0, seconds_per_step=1.0, peak=None) is None
