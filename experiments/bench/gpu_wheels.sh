#!/usr/bin/env bash
# Wheels that `python -m experiments.benchmark --preset gpu` needs beyond a CUDA image with
# jax, flax, optax, torch and numpy: diffusers (the PyTorch UNet2DModel and DDIMScheduler it
# times), for a GPU machine that cannot reach a package index. Its requirements
# huggingface-hub>=1.32, safetensors>=0.8, regex, requests, filelock and Pillow are on common
# CUDA images (checked on one with huggingface_hub 1.33.0, safetensors 0.8.0);
# importlib_metadata is not, but diffusers imports it only on Python < 3.8 (the image has
# 3.12), and the newest pulls lazy-importer, so it stays out. ml_collections, grain and TFDS
# are not needed: the benchmark never imports them.
#
# On a machine that reaches PyPI (about 6 MB):
#     bash experiments/bench/gpu_wheels.sh      # EXTRA="name==ver ..." adds others
# Copy the repository with its .gpu_wheels/ folder (git-ignored) to the GPU machine; there,
# before the benchmark:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#         --target /tmp/site .gpu_wheels/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
version=${DIFFUSERS_VERSION:-0.42.1}  # the version the CPU benchmark and tests ran with
rm -rf .gpu_wheels
# Pure-Python wheels; the platform and Python tags are those of the GPU image (CPython 3.12,
# x86-64 manylinux), so an added compiled package resolves for it, not for this machine.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu_wheels \
    "diffusers==${version}" ${EXTRA:-}
ls -l .gpu_wheels
du -sh .gpu_wheels
