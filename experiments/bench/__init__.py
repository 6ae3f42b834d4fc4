"""The internals of ``python -m experiments.benchmark``: its sections (CPU: train, sample, dit,
canny, attention; GPU: unet_dtypes, dit_mfu, ddim_sharded), their presets and config, the
interleaved timing and the table, FLOP counts and MFU, profiles, the JSON it writes, and the
PyTorch twins it times jaxdiff against (``torch_dit``); beside them the train-state memory
report of ``python -m experiments.fsdp_memory`` (``state_memory``).

Library code, never a CLI: nothing here registers flags or changes global state when
imported. The modules import jax and jaxdiff; torch and diffusers only inside the functions
that time them, so every module imports without them (``canny`` needs neither), and
``state_memory`` imports the run builders of ``experiments`` only when called.
"""
