"""Checks of what a user types on the command line, with messages that say what to type.

* ``field_hint``: a config override that names no field (``--config.train.batch_size``)
  gets the field it most likely meant, searched over every section of the config
  (``--config.data.batch_size``), not only among its siblings.
* ``check_workdir``: a ``--workdir`` that is a file, or lies below one, fails in one line
  that names the path, before any work.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any


def config_fields(config: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf field of a (nested) config: ``data.batch_size``, ..."""
    for name, value in config.items():
        path = f"{prefix}{name}"
        if hasattr(value, "items"):  # a section: dict or ConfigDict
            yield from config_fields(value, prefix=f"{path}.")
        else:
            yield path


def suggest_field(config: Mapping[str, Any], field: str) -> str | None:
    """The config field a mistyped dotted ``field`` most likely meant, or None.

    A field of the same name in another section wins (``train.batch_size`` ->
    ``data.batch_size``); otherwise the closest dotted name by edit similarity
    (``train.stepz`` -> ``train.steps``).
    """
    fields = list(config_fields(config))
    leaf = field.split(".")[-1]
    same_leaf = [f for f in fields if f.split(".")[-1] == leaf]
    if same_leaf:
        return difflib.get_close_matches(field, same_leaf, n=1, cutoff=0.0)[0]
    close = difflib.get_close_matches(field, fields, n=1, cutoff=0.6)
    return close[0] if close else None


def field_hint(config: Mapping[str, Any] | None, override: str) -> str:
    """The one-line error for ``--config.<field>=...`` naming a field ``config`` lacks."""
    field = override.split("=")[0].removeprefix("--").removeprefix("config.")
    guess = suggest_field(config, field) if config is not None else None
    return (
        f"--config.{field}: the config has no field {field!r}"
        + (f" (did you mean --config.{guess}?)" if guess else "")
        + '; list the fields with: python -c "from configs import <name>; '
        'print(<name>.get_config())"'
    )


def config_of(flag_values: Any, argv: list[str]) -> Any:
    """The ConfigDict that ``--config`` names, for hints after a failed parse; None when
    there is none or it does not load (the error message then comes without a hint)."""
    try:
        if flag_values["config"].value is not None:
            return flag_values["config"].value
        # A failed override leaves the flag unset: load the file the way config_flags does.
        path = next(
            (a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
            next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), None),
        )
        spec = importlib.util.spec_from_file_location("_config_for_hint", path.split(":")[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception:  # noqa: BLE001 - only a hint: any failure means no hint
        return None


def check_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    """``workdir`` as a Path; raises NotADirectoryError (one line, naming the path) when it,
    or a folder above it, is an existing file."""
    path = pathlib.Path(workdir)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            where = "is" if candidate == path else f"lies below {candidate}, which is"
            raise NotADirectoryError(
                f"--workdir {workdir} {where} a file, not a directory; give a new directory "
                "(it is created) or one that an earlier run wrote"
            )
    return path
