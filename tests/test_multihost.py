"""Two processes on localhost (2 simulated CPU devices each, gloo collectives) train exactly as
one process with 4 devices; only process 0 writes; the checkpoint they save together is
sampled by one process on one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_cli import TINY_CONFIG, tiny_config

from experiments.runs import kinds, restore

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def command(config_file, workdir, *extra):
    return [sys.executable, "-m", "experiments.train", f"--config={config_file}",
            f"--workdir={workdir}", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
            "--config.train.checkpoint_every=2", "--config.train.sample_every=1000", *extra]


def env(devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_two_processes(args, *, timeout=600):
    """``args`` run as processes 0 and 1 of one job (2 simulated devices each); asserts both
    exit 0 and returns their stderr."""
    address = f"localhost:{free_port()}"
    procs = [subprocess.Popen(args + [f"--coordinator_address={address}", "--num_processes=2",
                                      f"--process_id={i}"],
                              cwd=ROOT, env=env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in outputs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    config_file = tmp / "tiny.py"
    config_file.write_text(TINY_CONFIG)
    address = f"localhost:{free_port()}"
    # The one-process reference runs beside the two processes, not before them: each of the
    # three spends most of its time importing and compiling, mostly on one core.
    procs = [
        subprocess.Popen(
            command(config_file, tmp / "2x2", f"--coordinator_address={address}",
                    "--num_processes=2", f"--process_id={i}"),
            cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    procs.append(subprocess.Popen(command(config_file, tmp / "1x4"), cwd=ROOT, env=env(4),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=False):
        assert p.returncode == 0, err[-3000:]
    return tmp, [err for _, err in outputs[:2]]


def metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_step_by_step(runs):
    tmp, _ = runs
    one, two = metrics(tmp / "1x4"), metrics(tmp / "2x2")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=False):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a["step"], a["loss"], b["loss"])
    assert len({round(r["loss"], 5) for r in one}) == STEPS  # the loss does change


def test_same_final_params(runs):
    tmp, _ = runs
    config = tiny_config()
    model = kinds.build_model(config)
    # Saved by 1 process on 4 devices and by 2 processes; restored here on this process's mesh.
    a, ema_a, step_a = restore.restore_for_sampling(config, str(tmp / "1x4"), model)
    b, ema_b, step_b = restore.restore_for_sampling(config, str(tmp / "2x2"), model)
    assert step_a == step_b == STEPS
    # Float tolerance: the all-reduce adds in another order over gloo, and Adam divides by
    # sqrt(v), so where a gradient is ~1e-8 that noise moves the update by up to ~1% of the
    # learning rate (1e-3); everywhere else the params agree to float32 precision.
    for x, y in zip(jax.tree.leaves((a, ema_a)), jax.tree.leaves((b, ema_b)), strict=False):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=3e-5)
        assert np.isclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6).mean() > 0.99


def test_only_process_0_writes(runs):
    tmp, (err0, err1) = runs
    assert len(list((tmp / "2x2" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "train:" in err0 and "train:" not in err1  # one progress bar
    assert (tmp / "2x2" / "config.json").exists()


def test_two_process_checkpoint_sampled_on_one_device(runs, tmp_path):
    tmp, _ = runs
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.sample", f"--workdir={tmp / '2x2'}",
         f"--out={tmp_path}", "--num=1", "--steps=2", "--labels=1,2"],
        cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = np.load(tmp_path / "samples.npz")["images"]
    assert images.shape == (2, 8, 8, 1) and images.std() > 0


def test_evaluate_on_two_processes_equals_one_process(runs, tmp_path):
    """experiments.evaluate with 2 processes x 2 devices samples its batches sharded over all
    4 devices and reports what one process with one device reports."""
    tmp, _ = runs
    workdir = tmp / "2x2"
    args = [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
            "--samplers=ddim", "--steps=2", "--guidance=0", "--num=8", "--batch_size=8",
            "--classifier_steps=20", f"--cache_dir={tmp_path / 'cache'}"]
    one = subprocess.run(args, cwd=ROOT, env=env(1), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    alone = json.loads((workdir / "eval.json").read_text())
    run_two_processes(args)
    together = json.loads((workdir / "eval.json").read_text())
    (a,), (b,) = alone["results"], together["results"]
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-3, abs=1e-3)
    assert a["accuracy"] == b["accuracy"] and together["num_samples"] == 8
