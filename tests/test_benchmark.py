"""The benchmark's jax-side helpers in experiments.bench (no torch needed; the torch twin is
checked only when torch is installed). Nothing here is timed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import jax_side, sections, timing
from jaxdiff import samplers, schedules
from jaxdiff.models.unet import UNet

# The suite compiles with XLA's defaults (tests/conftest.py); these tests are about jaxdiff's
# own CPU options.
pytestmark = pytest.mark.usefixtures("jaxdiff_xla_options")


def test_interleaved_times_runs_variants_in_rotation():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    times = timing.interleaved_times(fns, repeats=3, warmup=1)
    assert calls == list("ABC") * 4  # one warmup round, then A B C A B C A B C
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_make_rows_and_table():
    times = {"jax": [1.0, 2.0, 9.0], "torch": [4.0, 4.0, 4.0]}
    rows = timing.make_rows("train", times, images_per_call=8, reference="torch")
    by_name = {r["variant"]: r for r in rows}
    assert by_name["jax"]["median_s"] == 2.0 and by_name["jax"]["images_per_s"] == 4.0
    assert by_name["jax"]["vs_reference"] == 2.0 and by_name["torch"]["vs_reference"] == 1.0
    table = timing.markdown_table(rows)
    assert table.splitlines()[2] == "| train | jax | 4.00 | 2.000 | 2.00x torch |"


def test_parse_xla_options():
    got = timing.parse_xla_options("--xla_cpu_use_onednn=true, a=3,b=X,c=False")
    assert got == {"xla_cpu_use_onednn": True, "a": 3, "b": "X", "c": False}
    assert timing.parse_xla_options("") == {}
    with pytest.raises(ValueError, match="name=value"):
        timing.parse_xla_options("xla_cpu_use_onednn")


def test_param_count_mismatch_stops_the_run(capsys):
    jax_side.check_param_counts("m", 10, 10)
    assert "parameter counts match" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="differ"):
        jax_side.check_param_counts("m", 10, 11)


@pytest.fixture(scope="module")
def tiny_unet():
    model = UNet(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,),
                 norm_num_groups=4)
    x = jnp.zeros((2, 8, 8, 1))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((2,), jnp.int32))["params"]
    return model, params


def test_python_loop_of_steps_equals_the_scan_samplers(tiny_unet):
    # The benchmark's "Python loop" baseline must compute what the one-scan sampler does.
    model, params = tiny_unet
    schedule = schedules.linear(10)
    key = jax.random.key(3)
    x_init = jax.random.normal(key, (2, 8, 8, 1))
    denoise = lambda x, t, c: model.apply({"params": params}, x, t, c)

    want, _ = samplers.ddim(denoise, schedule, key, x_init.shape, num_steps=5,
                            initial_noise=x_init)
    step = jax_side.ddim_step_fn(model.apply, schedule)
    x = x_init
    for t, t_prev in zip(*jax_side.ddim_timesteps(10, 5), strict=True):
        x = step(params, x, jnp.int32(t), jnp.int32(t_prev))
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)

    want, _ = samplers.ddpm(denoise, schedule, key, x_init.shape, initial_noise=x_init)
    step = jax_side.ddpm_step_fn(model.apply, schedule)
    step_key = jax.random.split(key)[1]
    x = x_init
    for t in range(9, -1, -1):
        x = step(params, x, jnp.int32(t), step_key)
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


def test_jax_variants_compile_the_requested_extras():
    f = jax_side.jit_with(lambda x: 2.0 * x)
    compiled = jax_side.jax_variants(f, (jnp.ones(3),),
                                      xla_options={"xla_cpu_enable_fast_math": False})
    # On the CPU jaxdiff compiles with its own options, so XLA's defaults are a variant too.
    assert sorted(compiled) == ["jaxdiff", "jaxdiff + xla_options", "jaxdiff, XLA default options"]
    for c in compiled.values():
        np.testing.assert_array_equal(c(jnp.ones(3)), 2.0 * np.ones(3))


@pytest.mark.slow
def test_jax_train_callables_step_the_real_train_step(tiny_unet):
    model, params = tiny_unet
    images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    step, state, batch = jax_side.jax_train_setup(model, params, {"image": images})
    fns = jax_side.jax_train_callables(step, state, batch, xla_options={})
    assert list(fns) == ["jaxdiff", "jaxdiff, XLA default options"]
    first = fns["jaxdiff"]()
    second = fns["jaxdiff"]()  # the donated state is rebound between calls
    # Both steps trained (finite losses, nothing skipped), and the second really is the next
    # step: its key is fold_in(rng, 1), so it draws other timesteps and noise.
    for m in (first, second):
        assert np.isfinite(float(m["loss"])) and float(m["skipped"]) == 0.0
    assert float(first["loss"]) != float(second["loss"])
    assert jax_side.count_params(params) == sum(np.size(p) for p in jax.tree.leaves(params))


def test_torch_dit_twin_has_the_same_parameter_count():
    pytest.importorskip("torch")
    from experiments.bench.torch_dit import TorchDiT
    from jaxdiff.models.dit import DiT

    arch = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)
    model = DiT(**arch, num_classes=3)
    x = jnp.zeros((1, 8, 8, 2))
    params = model.init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                        jnp.zeros((1,), jnp.int32))["params"]
    twin = TorchDiT(**arch, input_size=8, in_channels=2, num_classes=3)
    assert jax_side.count_params(params) == sum(p.numel() for p in twin.parameters())


def test_canny_section_times_two_equal_computations():
    images = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 1), dtype=np.uint8)
    fns = sections.canny_callables(images, low=50, high=150)
    assert sorted(fns) == ["cv2.Canny loop", "jax canny (jit)"]
    np.testing.assert_array_equal(np.asarray(fns["jax canny (jit)"]()), fns["cv2.Canny loop"]())


def test_attention_section_shapes_and_callables():
    from experiments.bench import attention

    cfg = dict(batch=32, image_size=32, channels=(32, 64, 64), dit_size="S", dit_patch=2)
    assert attention.attention_shapes(cfg) == {
        "UNet 16x16": (32, 256, 8, 8),  # 64 channels / attention_head_dim 8
        "DiT-S/2": (32, 256, 6, 64),  # 384 wide, 6 heads
    }
    pytest.importorskip("torch")
    fns = attention.attention_callables((2, 16, 2, 4))
    assert sorted(fns) == ["PyTorch scaled_dot_product_attention",
                           "jax.nn.dot_product_attention", "jaxdiff grouped_attention"]
    for fn in fns.values():
        fn()
