"""jaxdiff.checkpoint: save/restore round trip, keep-last-K, interrupted saves, mismatches."""

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdiff import checkpoint


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


def toy_state(width: int, seed: int = 0) -> ToyState:
    key = jax.random.PRNGKey(seed)
    params = {"dense": {"kernel": jax.random.normal(key, (3, width)), "bias": jnp.zeros(width)}}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    return ToyState(jnp.int32(0), params, opt.init(params), jax.random.PRNGKey(seed + 1))


def toy_config(width: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"model": {"name": "toy", "width": width, "dtype": "float32"}, "train": {"steps": 10}}
    )


def toy_iterator():
    return iter(grain.MapDataset.range(64).shuffle(seed=3).batch(4).to_iter_dataset())


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_round_trip_restores_state_and_data_position(tmp_path):
    state = toy_state(4, seed=1).replace(step=jnp.int32(7))
    iterator = toy_iterator()
    for _ in range(3):
        next(iterator)
    manager = checkpoint.make_manager(tmp_path, keep=2)
    checkpoint.save(manager, 7, state=state, config=toy_config(4), data_iterator=iterator)
    expected_next = next(iterator)
    manager.close()

    fresh_iterator = toy_iterator()
    manager = checkpoint.make_manager(tmp_path, keep=2)
    restored, step = checkpoint.restore(
        manager, state=toy_state(4, seed=0), config=toy_config(4), data_iterator=fresh_iterator
    )
    assert step == 7
    assert_trees_equal(restored, state)
    assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)  # structure, not dicts
    np.testing.assert_array_equal(next(fresh_iterator), expected_next)
    assert checkpoint.saved_config(manager)["model"]["width"] == 4


def test_empty_workdir_restores_nothing(tmp_path):
    manager = checkpoint.make_manager(tmp_path)
    assert checkpoint.restore(manager, state=toy_state(4), config=toy_config(4)) is None


def test_keeps_only_the_last_k(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=2)
    for step in range(1, 6):
        checkpoint.save(manager, step, state=toy_state(4, seed=step), config=toy_config(4))
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [4, 5]
    restored, step = checkpoint.restore(manager, state=toy_state(4), config=toy_config(4))
    assert step == 5
    assert_trees_equal(restored.params, toy_state(4, seed=5).params)


def test_interrupted_save_is_never_the_latest(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=3)
    checkpoint.save(manager, 5, state=toy_state(4, seed=5), config=toy_config(4), wait=True)
    manager.close()
    # What a save killed half-way leaves behind: orbax's temporary step directory, with
    # some array files but no commit.
    partial = checkpoint.checkpoint_dir(tmp_path) / "6.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)

    manager = checkpoint.make_manager(tmp_path, keep=3)
    assert manager.latest_step() == 5
    restored, step = checkpoint.restore(manager, state=toy_state(4), config=toy_config(4))
    assert step == 5
    assert_trees_equal(restored.params, toy_state(4, seed=5).params)
    # ... and the next real save of that step still works.
    checkpoint.save(manager, 6, state=toy_state(4, seed=6), config=toy_config(4), wait=True)
    assert manager.latest_step() == 6


def test_mismatched_checkpoint_names_the_config_fields(tmp_path):
    manager = checkpoint.make_manager(tmp_path)
    checkpoint.save(manager, 3, state=toy_state(4), config=toy_config(4), wait=True)
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        checkpoint.restore(manager, state=toy_state(8), config=toy_config(8))
    message = str(info.value)
    assert "model.width: 4 (saved) != 8 (now)" in message
    assert "params.dense.kernel has shape (3, 4) in the checkpoint, (3, 8) in the model" in message
    assert "train.steps" not in message  # only fields that differ are listed


def test_config_diff_lists_added_and_removed_fields():
    diff = checkpoint.config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "d": 3}})
    assert diff == ["a.c: 2 (saved) != '<absent>' (now)", "a.d: '<absent>' (saved) != 3 (now)"]
