"""jaxdiff.xla_options: the CPU compile options are taken, dropped when unknown, and do not
change what a program computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import xla_options
from jaxdiff.models.unet import UNet


def test_cpu_gets_the_options_and_other_backends_none():
    assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
    assert xla_options.compiler_options("gpu") == {}
    assert xla_options.compiler_options("tpu") == {}


def test_unknown_option_is_dropped_with_a_warning(monkeypatch):
    monkeypatch.setattr(
        xla_options, "CPU_OPTIONS",
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NOT_A_TYPE"},
    )
    with pytest.warns(UserWarning, match="does not take"):
        assert xla_options.compiler_options("cpu") == {}


def test_same_numbers_as_xla_defaults():
    # A UNet forward + gradient (convs, dots, reductions): the options only pick kernels.
    model = UNet(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(1,),
                 norm_num_groups=4)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([3, 700])
    params = model.init(jax.random.key(1), x, t)["params"]

    def loss(p):
        return jnp.mean(model.apply({"params": p}, x, t) ** 2)

    tuned = xla_options.jit(jax.value_and_grad(loss))(params)
    default = jax.jit(jax.value_and_grad(loss))(params)
    for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(default), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
