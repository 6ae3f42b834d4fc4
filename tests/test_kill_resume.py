"""SIGKILL at random steps (no handler runs, a save may be cut half-way), then the same command
again: the run ends bit-identical to one that was never interrupted. Issue 14."""

import random

import jax
import numpy as np
import pytest
from test_cli import compile_cache, launch, losses, tiny_config, wait_for_steps  # noqa: F401

from experiments import from_config, train

STEPS = 10
pytestmark = pytest.mark.slow


def final_params(workdir):
    config = tiny_config()
    model = from_config.build_model(config)
    params, ema, step = from_config.restore_for_sampling(config, str(workdir), model)
    assert step == STEPS
    return jax.tree.leaves((params, ema))


def test_sigkill_at_random_steps_resumes_bit_identically(tmp_path):
    straight = tmp_path / "straight"
    config = tiny_config()
    config.train.update(steps=STEPS, checkpoint_every=2)
    train.train_and_evaluate(config, str(straight))

    killed = tmp_path / "killed"
    rng = random.Random(14)
    for _ in range(2):  # two kills, each at a random step past the last one seen
        seen = len(losses(killed)) if (killed / "metrics.jsonl").exists() else 0
        process = launch(tmp_path, killed, "--config.train.checkpoint_every=2")
        wait_for_steps(process, killed, min(seen + rng.randint(1, 4), STEPS - 1))
        process.kill()
        process.communicate(timeout=60)
    process = launch(tmp_path, killed, "--config.train.checkpoint_every=2",
                     f"--config.train.steps={STEPS}")
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err

    assert losses(killed) == losses(straight)  # every logged step, exactly
    for a, b in zip(final_params(killed), final_params(straight)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
