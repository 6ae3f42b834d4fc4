"""jaxdiff.xla_options: the CPU compile options are taken, dropped when unknown, and do not
change what a program computes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import xla_options
from jaxdiff.models.unet import UNet

# The suite compiles with XLA's defaults (tests/conftest.py); these tests are about jaxdiff's
# own CPU options.
pytestmark = pytest.mark.usefixtures("jaxdiff_xla_options")


def test_cpu_gets_the_options_and_other_backends_none():
    assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
    assert xla_options.compiler_options("gpu") == {}
    assert xla_options.compiler_options("tpu") == {}


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """The probe's memory in a temporary cache directory, nothing remembered in-process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    xla_options._probed.cache_clear()
    yield tmp_path / "jaxdiff" / "xla_cpu_options.json"
    xla_options._probed.cache_clear()


def test_unknown_option_is_dropped_with_a_warning(monkeypatch, fresh_probe):
    monkeypatch.setattr(
        xla_options, "CPU_OPTIONS",
        {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NOT_A_TYPE",
         "xla_cpu_use_onednn": True},
    )
    with pytest.warns(UserWarning, match="does not take xla_cpu_experimental_ynn"):
        assert xla_options.compiler_options("cpu") == {"xla_cpu_use_onednn": True}


def test_options_that_crash_the_probe_fall_back_to_xla_defaults(monkeypatch, fresh_probe):
    """An illegal instruction in a kernel library kills the process that runs it: only the
    child dies, and the parent compiles with XLA's defaults after one warning."""
    monkeypatch.setattr(xla_options, "_PROBE",
                        "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    with pytest.warns(UserWarning, match=r"failed a test program \(exit status -4\)") as seen:
        assert xla_options.compiler_options("cpu") == {}
    assert len(seen) == 1


def test_the_answer_is_remembered_per_machine_and_jaxlib(monkeypatch, fresh_probe):
    assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
    remembered = json.loads(fresh_probe.read_text())
    (key,) = remembered
    assert xla_options._jaxlib_version() in key and remembered[key] == xla_options.CPU_OPTIONS
    xla_options._probed.cache_clear()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("probed again"))
    assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS


def test_environment_variable_turns_the_options_off(monkeypatch):
    monkeypatch.setenv("JAXDIFF_XLA_OPTIONS", "default")
    assert xla_options.compiler_options("cpu") == {}


@pytest.mark.slow  # ~27 s of compiling on 2 cores
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


def test_onednn_programs_compile_quietly_with_a_persistent_cache(tmp_path):
    # XLA cannot serialise oneDNN fusions into JAX's compilation cache; importing
    # jaxdiff.xla_options keeps that per-compile warning off the user's stderr.
    code = (
        "import jax, jax.numpy as jnp\n"
        "from jaxdiff import xla_options\n"
        "f = xla_options.jit(lambda a, b: jnp.tanh(a @ b))\n"
        "print(float(f(jnp.ones((64, 64)), jnp.ones((64, 64)))[0, 0]))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) == 1.0
    assert "Error writing persistent compilation cache" not in proc.stderr, proc.stderr[-2000:]
