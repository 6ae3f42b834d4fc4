"""Bytes of the train state (params, Adam moments, EMA) each device holds, with and without
FSDP, from ``jax.eval_shape``: nothing is allocated or trained.

    # DiT-XL/2 (Peebles & Xie 2023, table 1) on ImageNet-256 latents (32x32x4, 1000 classes):
    python -m experiments.fsdp_memory --config configs/mnist_dit.py --devices 8 \\
        --fsdp 1,2,4,8 --config.model.depth=28 --config.model.hidden_size=1152 \\
        --config.model.num_heads=16 --config.model.num_classes=1000 \\
        --config.data.image_size=32 --config.data.channels=4

On a machine without that many accelerators the devices are simulated CPU devices (only
their count matters for the shard shapes).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.bench.state_memory import report
from experiments.runtime.flag_defs import define


def define_flags() -> None:
    """Registers ``--config``, ``--devices`` and ``--fsdp`` (those another CLI registered
    already are shared)."""
    define(config_flags.DEFINE_config_file, "config", None, "Experiment config file.",
           lock_config=True)
    define(flags.DEFINE_integer, "devices", 8, "Devices to simulate when there are fewer.")
    define(flags.DEFINE_list, "fsdp", ["1", "8"], "mesh.fsdp values to compare.")


def main(argv):
    del argv
    import jax

    devices = flags.FLAGS.devices
    if len(jax.devices()) < devices:
        sys.exit(f"error: only {len(jax.devices())} devices; run with XLA_FLAGS="
                 f"--xla_force_host_platform_device_count={devices}")
    for row in report(flags.FLAGS.config, fsdp_values=[int(v) for v in flags.FLAGS.fsdp]):
        print(f"devices={row['devices']} fsdp={row['fsdp']}: {row['num_params']:,} params, "
              f"per device {row['params_bytes_per_device']:,} bytes "
              f"({row['params_bytes_per_device'] / 2**20:,.1f} MiB) of params, "
              f"{row['state_bytes_per_device'] / 2**20:,.1f} MiB of state "
              "(params + Adam moments + EMA)")


if __name__ == "__main__":
    # Simulated CPU devices when run on a CPU machine; set before jax is imported.
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={count}")
    define_flags()
    app.run(main)
