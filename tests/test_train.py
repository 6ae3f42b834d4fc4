"""The real train step on a tiny conv net: it learns, it skips non-finite steps, and it gives
the same run on 1 and 4 (simulated CPU) devices with a sharded batch."""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import losses, optim, schedules, train

NUM_CLASSES = 3
SEED = 42
COMPARE_STEPS = 4


class TinyNet(nn.Module):
    """A 3-conv eps-predictor with a timestep and a label input (the model contract's
    signature), small enough to compile in a second. Defined here so that these tests do
    not depend on the real models."""

    num_classes: int = NUM_CLASSES
    features: int = 16

    @nn.compact
    def __call__(self, x, t, cond=None, *, train=False):
        emb = nn.Dense(self.features)(t[:, None].astype(jnp.float32) / 100.0)
        emb = emb + nn.Embed(self.num_classes + 1, self.features)(cond)
        h = nn.silu(nn.Conv(self.features, (3, 3))(x) + emb[:, None, None, :])
        h = nn.Dropout(0.1, deterministic=not train)(h)
        h = nn.silu(nn.Conv(self.features, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def problem():
    """(params, batch, loss_fn, optimizer): 16 fixed 8x8 stripe images with labels."""
    n, size = 16, 8
    i = np.arange(n)[:, None, None]
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.sin(0.8 * (1 + i % 4) * (xx + (i // 4) * yy))[..., None]  # (16, 8, 8, 1)
    batch = {"image": images.astype(np.float32), "label": (np.arange(n) % NUM_CLASSES)
             .astype(np.int32)}
    model = TinyNet()
    params = model.init(jax.random.key(0), batch["image"][:1], np.zeros(1, np.int32),
                        batch["label"][:1])["params"]
    loss_fn = losses.make_denoising_loss(model.apply, schedules.linear(100),
                                         num_classes=NUM_CLASSES)
    optimizer = optim.make_optimizer(learning_rate=3e-3, warmup_steps=2, ema_decay=0.9)
    return params, batch, loss_fn, optimizer


def run(devices, steps, params, batch, loss_fn, optimizer, step=None):
    """Trains ``steps`` steps on a mesh over ``devices``; returns (state, per-step metrics,
    the sharded batch, the step function)."""
    mesh = train.make_mesh(devices)
    state = train.replicate(train.create_train_state(params, optimizer, jax.random.key(SEED)),
                            mesh)
    step = step or train.make_train_step(loss_fn, optimizer, mesh)
    sharded = train.shard_batch(batch, mesh)
    history = []
    for _ in range(steps):
        state, metrics = step(state, sharded)
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history, sharded, step


@pytest.fixture(scope="module")
def trained():
    params, batch, loss_fn, optimizer = problem()
    initial = jax.device_get(params)  # the train step donates (deletes) the buffers it gets
    state, history, _, step = run(jax.devices()[:1], 120, params, batch, loss_fn, optimizer)
    return dict(params=initial, batch=batch, loss_fn=loss_fn, optimizer=optimizer, step=step,
                state=state, history=history)


def test_training_lowers_the_loss(trained):
    batch, loss_fn, state, history = (trained[k] for k in ("batch", "loss_fn", "state",
                                                            "history"))
    # A fixed evaluation: the batch tiled 8x, one key, before and after training.
    big = {k: np.concatenate([v] * 8) for k, v in batch.items()}
    evaluate = jax.jit(lambda p: loss_fn(p, big, jax.random.key(123))[0])
    before, after = float(evaluate(trained["params"])), float(evaluate(state.params))
    assert after < 0.7 * before, (before, after)
    assert int(state.step) == 120 and sum(m["skipped"] for m in history) == 0
    assert all(m["grad_norm"] > 0 for m in history)
    np.testing.assert_allclose([m["learning_rate"] for m in history[:3]], [0, 1.5e-3, 3e-3],
                               rtol=1e-6)
    # The EMA (decay 0.9) tracks the params: close, not equal.
    ema, final = optim.ema_params(state.opt_state), state.params
    assert float(evaluate(ema)) < 0.8 * before
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, ema, final)))


def test_non_finite_batch_is_skipped(trained):
    batch, step = trained["batch"], trained["step"]  # reuse the compiled step
    mesh = train.make_mesh(jax.devices()[:1])
    state = train.replicate(
        train.create_train_state(trained["params"], trained["optimizer"], jax.random.key(0)),
        mesh)
    # The step's key is fold_in(rng, step): step 0's loss is loss_fn at fold_in(key, 0).
    loss_at = jax.jit(lambda p, s: trained["loss_fn"](
        p, batch, jax.random.fold_in(jax.random.key(0), s))[0])
    expected = float(loss_at(trained["params"], 0))
    state, metrics = step(state, train.shard_batch(batch, mesh))
    assert float(metrics["skipped"]) == 0
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    before = jax.device_get((state.params, state.opt_state))  # state is donated below

    bad = dict(batch, image=batch["image"].copy())
    bad["image"][3, 2, 2, 0] = np.nan
    state, metrics = step(state, train.shard_batch(bad, mesh))
    assert float(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 2
    jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), before)

    state, metrics = step(state, train.shard_batch(batch, mesh))
    assert float(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 3
    # The skipped step still used up its key: this step drew fold_in(key, 2), not 1.
    fresh, reused = float(loss_at(before[0], 2)), float(loss_at(before[0], 1))
    assert float(metrics["loss"]) == pytest.approx(fresh, rel=1e-5)
    assert abs(fresh - reused) > 1e-3 * fresh


SUBPROCESS = """
import json, sys
sys.path.insert(0, {tests_dir!r})
import jax
import numpy as np
from test_train import COMPARE_STEPS, problem, run
from jaxdiff import train

assert len(jax.devices()) == 4, jax.devices()
state, history, sharded, _ = run(jax.devices(), COMPARE_STEPS, *problem())
image, leaf = sharded["image"], jax.tree.leaves(state.params)[0]
out = {{
    "losses": [m["loss"] for m in history],
    "batch_devices": len(image.sharding.device_set),
    "shard_rows": sorted({{s.data.shape[0] for s in image.addressable_shards}}),
    "params_devices": len(leaf.sharding.device_set),
    "params_replicated": bool(leaf.sharding.is_fully_replicated),
}}
try:
    train.shard_batch({{"image": np.zeros((6, 2))}}, train.make_mesh())
    out["uneven_error"] = False
except ValueError:
    out["uneven_error"] = True
print("RESULT " + json.dumps(out))
"""


def test_same_run_on_one_and_four_devices(trained):
    tests_dir = pathlib.Path(__file__).resolve().parent
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(tests_dir.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS.format(tests_dir=str(tests_dir))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])

    # The batch is split 4 x 4 rows over the 4 devices; the state is replicated on all 4.
    assert out["batch_devices"] == 4 and out["shard_rows"] == [4]
    assert out["params_devices"] == 4 and out["params_replicated"]
    assert out["uneven_error"]
    # Same seed, same losses: 4 devices in the subprocess vs 1 device in this process.
    in_process = [m["loss"] for m in trained["history"][:COMPARE_STEPS]]
    np.testing.assert_allclose(out["losses"], in_process, rtol=1e-5)
    assert len(set(np.round(in_process, 6))) == COMPARE_STEPS  # the losses do change
