"""One-line user errors: every mistake a user can fix (a bad config field, a missing file, a
workdir that does not fit the config, an unknown flag) ends the program with
``error: <message>`` on stderr and exit status 2 instead of a traceback."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
from collections.abc import Iterator
from typing import Any

from experiments.runtime import user_input


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message says which and why."""


# Where jaxdiff's own code lives: a ValueError raised there is about the user's input.
_OWN_CODE = tuple(
    str(pathlib.Path(__file__).resolve().parents[2] / package) + os.sep
    for package in ("jaxdiff", "experiments", "configs")
)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a mistake the user can fix: an OSError (a missing or unreadable
    file, a full disk, a config file that fails to load: config_flags loads it lazily), or a
    ValueError raised by jaxdiff's own code, which raises ValueError only for inputs the
    user chose (ConfigError, CheckpointMismatchError, ...; docs/architecture.md). A
    ValueError raised inside a library (jax, flax, numpy) is a bug, not the user's."""
    if isinstance(error, OSError):
        return True
    if not isinstance(error, ValueError):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is None or tb.tb_frame.f_code.co_filename.startswith(_OWN_CODE)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turns the errors a user can fix (bad config, missing files, a workdir that does not
    fit the config; ``is_user_error``) into ``error: <message>`` on stderr and exit status 2.
    Anything else is a bug and keeps its traceback."""
    try:
        yield
    except (ValueError, OSError) as e:
        if not is_user_error(e):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str], flag_values: Any = None) -> list[str]:
    """absl's flag parser for ``app.run(main, flags_parser=parse_flags)``, with one-line
    errors: an unknown config field (``--config.train.stepz=3``), a value of the wrong type
    (``--config.train.steps=abc``) or a config file that does not load exit with status 2."""
    from absl import flags

    flag_values = flag_values or flags.FLAGS
    try:
        return flag_values(argv)
    except flags.UnrecognizedFlagError as e:  # --config.<section>.<field> with no such section
        unknown = re.search(r"flag '(config\.[\w.]+)'", str(e))
        if unknown is None:
            message = str(e)
        else:
            config = user_input.config_of(flag_values, argv)
            message = user_input.field_hint(config, unknown.group(1))
    except flags.Error as e:  # wrong type or unknown flag: absl's message is already clear
        message = str(e)
    except (AttributeError, KeyError) as e:  # an override names a field the config lacks
        # ConfigDict says e.g. '\'stepz\'\nDid you mean "steps" instead of "stepz"?'
        text = str(e)
        guess = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
        field = guess.group(2) if guess else re.search(r"\w+", text).group(0)
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        named = [a for a in overrides if field in a.split(".")] or overrides or ["--config"]
        message = user_input.field_hint(user_input.config_of(flag_values, argv), named[0])
    except OSError as e:  # config file missing or raising on import
        message = " ".join(str(e).split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def start_cli(argv: list[str]) -> None:
    """What every CLI's ``main`` does first: reject stray arguments and quiet library logs
    (orbax and jax log every checkpoint save at INFO; ``--verbosity=0`` brings them back)."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
