"""Crashes mid-run. SIGKILL at random steps (no handler runs, a save may be cut half-way), then
the same command again: the run ends bit-identical to one that was never interrupted. A disk
that fills up while saving: one line saying nothing was lost."""

import os
import pathlib
import random
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_cli import (
    TINY_CONFIG,
    launch,
    losses,
    tiny_config,
    wait_for_steps,
)

from experiments.runs import kinds, restore, train_loop

STEPS = 10
pytestmark = pytest.mark.slow


def final_params(workdir):
    config = tiny_config()
    model = kinds.build_model(config)
    params, ema, step = restore.restore_for_sampling(config, str(workdir), model)
    assert step == STEPS
    return jax.tree.leaves((params, ema))


def test_sigkill_at_random_steps_resumes_bit_identically(tmp_path):
    straight = tmp_path / "straight"
    config = tiny_config()
    config.train.update(steps=STEPS, checkpoint_every=2)
    train_loop.train_and_evaluate(config, str(straight))

    killed = tmp_path / "killed"
    rng = random.Random(14)
    for _ in range(2):  # two kills, each at a random step past the last one seen
        seen = len(losses(killed)) if (killed / "metrics.jsonl").exists() else 0
        process = launch(tmp_path, killed, "--config.train.checkpoint_every=2")
        wait_for_steps(process, killed, min(seen + rng.randint(1, 4), STEPS - 1), timeout=900)
        process.kill()
        process.communicate(timeout=60)
    process = launch(tmp_path, killed, "--config.train.checkpoint_every=2",
                     f"--config.train.steps={STEPS}")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err

    assert losses(killed) == losses(straight)  # every logged step, exactly
    for a, b in zip(final_params(killed), final_params(straight), strict=False):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


DISK_FULL = """
set -u
mkdir -p {mnt} && mount -t tmpfs -o size=8m tmpfs {mnt} || exit 77
run() {{ {python} -m experiments.train --config {config} --workdir {mnt}/run \\
    --config.train.sample_every=1000 --config.train.checkpoint_every=2 "$@"; }}
run --config.train.steps=2 2>/dev/null || exit 78
# Fill the disk, leaving 64 KiB: enough for log lines, not for a checkpoint.
dd if=/dev/zero of={mnt}/fill bs=4k 2>/dev/null; truncate -s -64k {mnt}/fill
run --config.train.steps=4
echo "rc=$?"
ls {mnt}/run/checkpoints
"""


def test_disk_full_while_saving_is_one_line(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    config_file = tmp_path / "tiny.py"
    config_file.write_text(TINY_CONFIG)
    script = DISK_FULL.format(mnt=tmp_path / "mnt", python=sys.executable, config=config_file)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True,
                          text=True, timeout=900, cwd=env["PYTHONPATH"])
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip("no user namespaces here: cannot mount a small tmpfs")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rc=2" in proc.stdout
    err = [line for line in proc.stderr.splitlines()
           if line.strip() and "train:" not in line and not line.startswith("resuming")]
    # Usually the checkpoint of step 4 is what no longer fits; a log line may be first.
    assert len(err) == 1 and err[0].startswith("error: disk full while "), "\n".join(err)
    assert err[0].endswith(
        "nothing was lost: the newest complete checkpoint (step 2) is intact. "
        "Free some space and run the same command again to resume from it"
    ), err
    assert proc.stdout.split("rc=2")[1].split()[0] == "2"  # step 2 is still there
