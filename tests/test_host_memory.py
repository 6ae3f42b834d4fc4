"""experiments.runtime.host_memory: glibc tunables that keep XLA:CPU's scratch memory mapped."""

import os
import subprocess
import sys

import pytest

from experiments.runtime import host_memory
from tests.conftest import ROOT


def test_tuned_environ_adds_tunables_and_keeps_the_users():
    env = host_memory.tuned_environ({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    tunables = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.arena_max=4" in tunables  # the user's value wins
    assert "glibc.malloc.arena_max=1" not in tunables
    for name in ("glibc.malloc.mmap_max", "glibc.malloc.trim_threshold", "glibc.malloc.hugetlb"):
        assert f"{name}={host_memory.TUNABLES[name]}" in tunables
    assert env["PATH"] == "/bin"
    assert host_memory.tuned_environ(env) is None  # complete: no second re-exec


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables")
def test_wanted_only_for_cpu_jax_and_not_opted_out():
    assert host_memory.wanted({"JAX_PLATFORMS": "cpu"})
    assert not host_memory.wanted({"JAX_PLATFORMS": "cuda"})
    for off in ("0", "false", "Off", "no"):
        assert not host_memory.wanted({"JAX_PLATFORMS": "cpu", host_memory.OPT_OUT: off})
    assert host_memory.wanted({"JAX_PLATFORMS": "cpu", host_memory.OPT_OUT: "1"})


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-m", "experiments.runtime.host_memory"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    lines = dict(line.split("=", 1) if "=" in line else line.split(": ", 1)
                 for line in out.splitlines())
    return lines["GLIBC_TUNABLES"], float(lines["minor page faults per call"])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables")
def test_module_run_reexecutes_with_tunables_and_stops_the_page_faults():
    tunables, faults = _run({})
    off_tunables, off_faults = _run({host_memory.OPT_OUT: "0"})
    assert off_tunables == ""
    assert all(f"{k}={v}" in tunables.split(":") for k, v in host_memory.TUNABLES.items())
    # 64 MB of scratch and 64 MB of result are 32,768 pages: faulted in at every call
    # without the tunables, kept mapped with them.
    assert off_faults > 15_000
    assert faults < off_faults / 20
