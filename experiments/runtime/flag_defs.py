"""Flags are registered by each CLI's ``define_flags()``, never at import, so that a notebook
or a test can import every CLI module (and call their ``define_flags()`` one after another)
without absl's DuplicateFlagError: CLIs that share a flag (``--workdir``, ``--config``) share
the one registered first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import flags


def define(define_fn: Callable[..., flags.FlagHolder], name: str, *args: Any,
           **kwargs: Any) -> flags.FlagHolder:
    """``define_fn(name, *args, **kwargs)`` (``flags.DEFINE_string``,
    ``config_flags.DEFINE_config_file``, ...) unless a flag called ``name`` is registered
    already; then a holder of that flag."""
    flag_values = kwargs.get("flag_values", flags.FLAGS)
    if name in flag_values:
        return flags.FlagHolder(flag_values, flag_values[name])
    return define_fn(name, *args, **kwargs)
