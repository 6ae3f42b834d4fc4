"""FSDP (mesh.fsdp): the same losses as pure data parallel on 4 simulated CPU devices, each
device holding about 1/4 of the state, and a checkpoint that restores on one device."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdiff import train

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_cli import tiny_config
from experiments.runs import builders, kinds, restore, training_data

from jaxdiff import checkpoint, optim
from jaxdiff import train as jd_train

config = tiny_config()
model = kinds.build_model(config)
schedule = builders.build_schedule(config)
optimizer = builders.build_optimizer(config)
loss_fn = builders.build_loss(config, model, schedule)
init = lambda key: builders.init_state(config, model, optimizer, key)
key = jax.random.key(0)
out = {{}}
for fsdp in (1, 4):
    mesh = jd_train.make_mesh(fsdp=fsdp)
    shardings = jd_train.state_shardings(jax.eval_shape(init, key), mesh)
    state = jax.jit(init, out_shardings=shardings)(key)
    # Measured from the arrays' own shards: bytes each device really holds.
    held = {{}}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            held[str(shard.device)] = held.get(str(shard.device), 0) + shard.data.nbytes
    computed = jd_train.bytes_per_device(jax.eval_shape(init, key), shardings)
    step = jd_train.make_train_step(loss_fn, optimizer, mesh, state_sharding=shardings)
    data = training_data.build_data(config)
    losses = []
    for _ in range(3):
        state, metrics = step(state, jd_train.shard_batch(next(data), mesh))
        losses.append(float(metrics["loss"]))
    out[fsdp] = dict(losses=losses, held=held, computed={{str(d): b for d, b in computed.items()}},
                     kernel_spec=str(state.params["conv_in"]["kernel"].sharding.spec),
                     params=[np.asarray(x).tolist() for x in jax.tree.leaves(state.params)][:3])
    if fsdp == 4:
        manager = checkpoint.make_manager({workdir!r})
        checkpoint.save(manager, 3, state=state, config=config, wait=True)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    code = SCRIPT.format(tests=str(ROOT / "tests"), workdir=str(workdir))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), workdir


@pytest.mark.slow
def test_fsdp_gives_the_data_parallel_losses(fsdp_run):
    out, _ = fsdp_run
    dp, fsdp = out["1"], out["4"]
    np.testing.assert_allclose(fsdp["losses"], dp["losses"], rtol=2e-6)
    assert len(set(np.round(dp["losses"], 5))) == 3  # the loss does change
    for a, b in zip(fsdp["params"], dp["params"], strict=False):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


@pytest.mark.slow
def test_each_device_holds_about_a_quarter_of_the_state(fsdp_run):
    out, _ = fsdp_run
    replicated = out["1"]["held"]
    sharded = out["4"]["held"]
    assert len(sharded) == 4 and len(set(replicated.values())) == 1
    total = next(iter(replicated.values()))  # each device holds everything without FSDP
    for held in sharded.values():  # scalars, the rng and a few odd-sized arrays stay whole
        assert 0.25 <= held / total < 0.27, (held, total)
    assert "fsdp" in out["4"]["kernel_spec"]


@pytest.mark.slow
def test_fsdp_checkpoint_restores_on_one_device(fsdp_run):
    from test_cli import tiny_config

    from experiments.runs import kinds, restore


    _, workdir = fsdp_run
    config = tiny_config()
    model = kinds.build_model(config)
    params, _, step = restore.restore_for_sampling(config, str(workdir), model)
    assert step == 3
    out, _ = fsdp_run
    leaves = jax.tree.leaves(params)
    for got, want in zip(leaves, out["4"]["params"], strict=False):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_bytes_from_shapes_match_the_arrays_shards(fsdp_run):
    out, _ = fsdp_run
    assert out["4"]["computed"] == out["4"]["held"]  # train.bytes_per_device, from eval_shape


def test_fsdp_that_does_not_divide_the_devices():
    with pytest.raises(ValueError, match="mesh.fsdp=3 must be a positive divisor"):
        train.make_mesh([jax.devices()[0]] * 2, fsdp=3)
