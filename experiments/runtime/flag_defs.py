"""Flags are registered by each CLI's ``define_flags()``, never at import, so that a notebook
or a test can import every CLI module (and call their ``define_flags()`` one after another)
without absl's DuplicateFlagError: CLIs that share a flag (``--workdir``, ``--config``) share
the one registered first."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from absl import flags


def define(define_fn: Callable[..., flags.FlagHolder], name: str, *args: Any,
           **kwargs: Any) -> flags.FlagHolder:
    """``define_fn(name, *args, **kwargs)`` (``flags.DEFINE_string``,
    ``config_flags.DEFINE_config_file``, ...) unless a flag called ``name`` is registered
    already; then a holder of that flag.

    The flag is a key flag of the module that calls ``define`` (absl would otherwise file it
    under this module), so ``python -m experiments.<cli> --help`` lists it."""
    flag_values = kwargs.get("flag_values", flags.FLAGS)
    holder = (flags.FlagHolder(flag_values, flag_values[name]) if name in flag_values
              else define_fn(name, *args, **kwargs))
    caller = sys._getframe(1).f_globals.get("__name__", "")
    # absl names the program's own module by its path (``sys.argv[0]``), not "__main__".
    module = sys.argv[0] if caller == "__main__" else caller
    flag_values.register_key_flag_for_module(module, flag_values[name])
    return holder
