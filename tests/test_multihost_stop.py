"""A signal that reaches one process of a multi-process run stops every process after the
same step, with that step's checkpoint complete; the same command resumes from it. Two
processes on localhost, 2 simulated CPU devices each, gloo collectives."""

import json
import signal
import subprocess
import time

import pytest
from test_cli import TINY_CONFIG
from test_multihost import ROOT, command, env, free_port

from jaxdiff import checkpoint, integrity

pytestmark = pytest.mark.slow


def last_logged_step(workdir) -> int:
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def launch(config_file, workdir, address, steps):
    """The two processes of one run, killed at the end of the test whatever happens."""
    return [
        subprocess.Popen(
            command(config_file, workdir, f"--coordinator_address={address}",
                    "--num_processes=2", f"--process_id={i}", f"--config.train.steps={steps}",
                    "--config.train.checkpoint_every=1000"),
            cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]


@pytest.fixture
def processes():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, processes):
    config_file = tmp_path / "tiny.py"
    config_file.write_text(TINY_CONFIG)
    workdir = tmp_path / "run"
    procs = launch(config_file, workdir, f"localhost:{free_port()}", steps=100_000)
    processes.extend(procs)
    deadline = time.monotonic() + 600
    while last_logged_step(workdir) < 5:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, "the run did not reach step 5"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only, as a preempted host would see it
    signalled = time.monotonic()
    outputs = [p.communicate(timeout=90) for p in procs]
    assert time.monotonic() - signalled < 60
    stops = []
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
        line = next(x for x in err.splitlines() if "stopped by SIGTERM at step" in x)
        stops.append(int(line.split("at step ")[1].split(";")[0]))
    assert stops[0] == stops[1] >= 5
    step = stops[0]
    manager = checkpoint.make_manager(workdir, read_only=True)
    assert manager.latest_step() == step
    step_dir = checkpoint.step_dir(manager, step)
    manager.close()
    assert integrity.has_manifest(step_dir) and integrity.verify(step_dir) is None

    # The same command (two more steps) resumes from that checkpoint.
    procs = launch(config_file, workdir, f"localhost:{free_port()}", steps=step + 2)
    processes.extend(procs)
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert f"resuming from the checkpoint of step {step}" in outputs[0][1]
    assert last_logged_step(workdir) == step + 2
