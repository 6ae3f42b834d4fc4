"""What an accelerator run relies on, checked on whatever backend the tests run on
(``JAX_PLATFORMS=cuda python -m pytest tests/test_precision_and_compiles.py`` on a GPU):

* a bfloat16-compute train step (params float32) gives the float32 step's loss and
  gradient norm on the same batch, params and key, within bf16 tolerance, for the UNet and
  the DiT;
* the train step and the DDIM scan compile once: later steps and later calls with new
  values (a new key, new noise, a new state) compile nothing.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff import losses, optim, samplers, schedules, train
from jaxdiff.models.dit import DiT
from jaxdiff.models.unet import UNet

NUM_CLASSES = 4
SCHEDULE = schedules.linear(100)
UNET = dict(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(1,),
            norm_num_groups=4, attention_head_dim=8, num_classes=NUM_CLASSES)
DIT = dict(hidden_size=64, depth=2, num_heads=4, patch_size=2, num_classes=NUM_CLASSES)


@contextlib.contextmanager
def count_compiles():
    """Yields a list that grows by one for each XLA backend compilation inside the block
    (jax reports each one as a '/jax/core/compile/backend_compile_duration' event)."""
    compiles: list[str] = []

    def listener(event: str, *_args, **_kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_compile_counter_sees_a_compile():
    with count_compiles() as compiles:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(3)).block_until_ready()
    assert len(compiles) >= 1  # jnp.ones and the lambda


def batch(size=8, image=8, channels=3):
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(-1, 1, (size, image, image, channels)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, (size,)).astype(np.int32)}


def init(model, data):
    return jax.jit(model.init)(jax.random.key(0), data["image"][:1],
                               jnp.zeros((1,), jnp.int32), data["label"][:1])["params"]


def loss_and_grad_norm(model, params, data):
    loss_fn = losses.make_denoising_loss(model.apply, SCHEDULE, num_classes=NUM_CLASSES)

    @jax.jit
    def f(params):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, data, jax.random.key(3))
        return loss, optax.tree.norm(grads)

    return [float(v) for v in f(params)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "dit"])
def test_bf16_train_loss_and_gradients_match_fp32(name):
    data = batch()
    model = UNet(**UNET) if name == "unet" else DiT(**DIT)
    params = init(model, data)
    # Zero-initialised output layers make the step-0 prediction 0 in any dtype; perturb so
    # the comparison sees the network's arithmetic.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape)
                                for p, k in zip(leaves, keys, strict=True)])
    loss32, grad32 = loss_and_grad_norm(model, params, data)
    loss16, grad16 = loss_and_grad_norm(model.clone(dtype=jnp.bfloat16), params, data)
    assert np.isfinite([loss16, grad16]).all()
    # bf16 rounds to 2^-9 relative; through a few blocks the loss moved ~0.1-0.5% on CPU.
    assert loss16 == pytest.approx(loss32, rel=0.03)
    assert grad16 == pytest.approx(grad32, rel=0.05)
    assert loss16 != loss32  # bf16 was really used


@pytest.mark.slow  # ~27 s of compiling on 2 cores
def test_train_step_compiles_once():
    data = batch()
    model = UNet(**UNET)
    params = init(model, data)
    loss_fn = losses.make_denoising_loss(model.apply, SCHEDULE, num_classes=NUM_CLASSES)
    optimizer = optim.make_optimizer(learning_rate=1e-3, warmup_steps=2)
    mesh = train.make_mesh()
    state = train.replicate(train.create_train_state(params, optimizer, jax.random.key(0)),
                            mesh)
    step = train.make_train_step(loss_fn, optimizer, mesh)
    sharded = train.shard_batch(data, mesh)
    state, metrics = step(state, sharded)
    jax.block_until_ready(metrics)
    with count_compiles() as compiles:
        for i in range(3):
            new = dict(data, image=data["image"] * np.float32(0.5 + 0.1 * i))
            state, metrics = step(state, train.shard_batch(new, mesh))
        jax.block_until_ready(metrics)
    assert int(state.step) == 4
    assert compiles == []


def test_ddim_scan_compiles_once():
    model = UNet(**UNET)
    data = batch()
    params = init(model, data)
    shape = (4, 8, 8, 3)
    mesh = train.make_mesh()

    @jax.jit
    def sample(params, key, labels):
        denoise = lambda x, t, c: model.apply({"params": params}, x, t, c)  # noqa: E731
        return samplers.ddim(denoise, SCHEDULE, key, shape, cond=labels, num_steps=5,
                             mesh=mesh)[0]

    labels = jnp.arange(4, dtype=jnp.int32) % NUM_CLASSES
    first = sample(params, jax.random.key(0), labels)
    # New values made outside the counted block (making them runs small eager programs).
    key, reversed_labels = jax.block_until_ready((jax.random.key(1), labels[::-1]))
    with count_compiles() as compiles:
        second = jax.block_until_ready(sample(params, key, reversed_labels))
    assert compiles == []
    assert not np.allclose(first, second)  # the new key really was used


def test_an_accelerator_test_run_keeps_the_cpu_and_float32_matmuls():
    from conftest import platforms_for_tests

    assert platforms_for_tests(None) == platforms_for_tests("") == "cpu"
    assert platforms_for_tests("cuda") == "cuda,cpu"  # jax.debug.callback needs the CPU
    assert platforms_for_tests("cuda, cpu") == "cuda,cpu"
    assert platforms_for_tests("tpu,cpu") == "tpu,cpu"
    # float32 oracles need float32 matmuls: no TF32 on GPUs, no bf16 passes on TPUs.
    assert jax.config.jax_default_matmul_precision == "highest"
