"""jaxdiff.checkpoint + jaxdiff.integrity: checksum manifests, fall-back to the newest intact
step, at least two steps kept, a full disk reported as such."""

import errno
import pathlib

import numpy as np
import pytest
from test_checkpoint import assert_trees_equal, toy_config, toy_state

from jaxdiff import checkpoint, integrity


def two_steps(tmp_path, keep=2):
    manager = checkpoint.make_manager(tmp_path, keep=keep)
    for step in (3, 6):
        checkpoint.save(manager, step, state=toy_state(4, seed=step), config=toy_config(4),
                        wait=True)
    return manager


def largest_array_file(manager, step) -> pathlib.Path:
    state_dir = checkpoint.step_dir(manager, step) / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def test_every_saved_step_has_a_manifest_that_verifies(tmp_path):
    manager = two_steps(tmp_path)
    for step in (3, 6):
        assert integrity.has_manifest(checkpoint.step_dir(manager, step))
        assert integrity.verify(checkpoint.step_dir(manager, step)) is None


def test_at_least_two_steps_are_kept(tmp_path):
    manager = two_steps(tmp_path, keep=1)
    assert list(manager.all_steps()) == [3, 6]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_newest_step_is_reported_and_the_older_one_used(tmp_path, capsys, damage):
    manager = two_steps(tmp_path)
    target = largest_array_file(manager, 6)
    data = bytearray(target.read_bytes())
    if damage == "flip":  # 32 flipped bytes: orbax alone reads them without complaint
        middle = len(data) // 2
        data[middle : middle + 32] = bytes(255 - b for b in data[middle : middle + 32])
    else:  # a truncated array file: orbax alone raises tensorstore's OUT_OF_RANGE
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))

    manager = checkpoint.make_manager(tmp_path)
    restored, step = checkpoint.restore(manager, state=toy_state(4), config=toy_config(4),
                                        set_aside_damaged=True)
    assert step == 3
    assert_trees_equal(restored.params, toy_state(4, seed=3).params)
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("warning:")]) == 1
    assert "checkpoint of step 6" in err[0] and "trying the one before it" in err[0]
    assert ("checksum" if damage == "flip" else "truncated") in err[0]
    # Set aside, so the run can save step 6 again and the next restore is silent.
    assert list(manager.all_steps()) == [3]
    assert list((tmp_path / "damaged_checkpoints").iterdir())
    checkpoint.save(manager, 6, state=toy_state(4, seed=6), config=toy_config(4), wait=True)
    assert checkpoint.restore(manager, state=toy_state(4), config=toy_config(4))[1] == 6


def test_unreadable_step_without_manifest_falls_back_too(tmp_path, capsys):
    # Steps written before manifests existed are read unverified; a read error still falls
    # back instead of a tensorstore traceback.
    manager = two_steps(tmp_path)
    (checkpoint.step_dir(manager, 6) / integrity.MANIFEST).unlink()
    for target in (checkpoint.step_dir(manager, 6) / "state").rglob("d/*"):
        target.write_bytes(target.read_bytes()[:10])
    restored, step = checkpoint.restore(checkpoint.make_manager(tmp_path, read_only=True),
                                        state=toy_state(4), config=toy_config(4))
    assert step == 3
    assert "cannot be read" in capsys.readouterr().err


def test_no_intact_step_is_one_error(tmp_path):
    manager = two_steps(tmp_path)
    for step in (3, 6):
        target = largest_array_file(manager, step)
        target.write_bytes(target.read_bytes()[:-8])
    with pytest.raises(checkpoint.CheckpointDamagedError, match="no intact checkpoint.*step 6"):
        checkpoint.restore(checkpoint.make_manager(tmp_path, read_only=True),
                           state=toy_state(4), config=toy_config(4))


def test_disk_full_says_nothing_was_lost(tmp_path, monkeypatch):
    manager = two_steps(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager, "save", full)
    with pytest.raises(checkpoint.CheckpointSaveError) as info:
        checkpoint.save(manager, 9, state=toy_state(4), config=toy_config(4), wait=True)
    assert "disk full while saving the checkpoint of step 9" in str(info.value)
    assert "nothing was lost: the newest complete checkpoint (step 6) is intact" in str(info.value)
    restored, step = checkpoint.restore(manager, state=toy_state(4), config=toy_config(4))
    assert step == 6 and np.isfinite(np.asarray(restored.params["dense"]["kernel"])).all()
