"""A checksum manifest per checkpoint step, so damaged files are found before they are read.

Orbax's atomic rename guarantees that a step directory is complete when it appears, not that
its bytes stay intact: a file truncated by a full disk or a copy, or bytes flipped on the way,
would be read back without error (tensorstore reads what is there) and training would resume
on damaged weights. ``write_manifest`` records the size and SHA-256 of every file of a step
once it is on disk; ``verify`` re-reads them and names the first that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

MANIFEST = "jaxdiff_manifest.json"
_CHUNK = 1 << 20


def file_digest(path: pathlib.Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def write_manifest(step_dir: str | os.PathLike) -> pathlib.Path:
    """Writes ``<step_dir>/jaxdiff_manifest.json``: {relative path: [size, sha256]} of every
    file under ``step_dir``. Written to a temporary name and renamed, so a manifest is either
    whole or absent."""
    step_dir = pathlib.Path(step_dir)
    entries = {
        str(p.relative_to(step_dir)): [p.stat().st_size, file_digest(p)] for p in _files(step_dir)
    }
    path = step_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def has_manifest(step_dir: str | os.PathLike) -> bool:
    return (pathlib.Path(step_dir) / MANIFEST).exists()


def verify(step_dir: str | os.PathLike) -> str | None:
    """None when every file listed in the step's manifest has its recorded size and checksum
    (or when the step has no manifest: written before manifests existed, or killed between
    orbax's rename and the manifest); else a short description of the first problem."""
    step_dir = pathlib.Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, OSError) as e:
        return f"its manifest {path.name} is unreadable ({e})"
    for name, (size, digest) in sorted(entries.items()):
        file = step_dir / name
        if not file.is_file():
            return f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, {size} were written (truncated?)"
        if file_digest(file) != digest:
            return f"{name} does not match its checksum (bytes changed on disk)"
    return None
