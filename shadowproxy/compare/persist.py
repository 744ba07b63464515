"""Writing and reading comparator snapshots on disk, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from shadowproxy.errors import StateError


def write_snapshot(path: Path, snapshot: dict[str, Any]) -> None:
    """Write ``snapshot`` so that a reader sees the old file or the new one, never half.

    A temporary file in the same folder is written and fsynced, renamed over ``path``, and
    the folder fsynced so the rename survives a crash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(snapshot))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_snapshot_file(path: Path) -> dict[str, Any]:
    """A snapshot document from ``path``; StateError naming the file when it is unusable."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise StateError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{path}: snapshot is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError(f"{path}: snapshot is not a JSON object")
    return data
