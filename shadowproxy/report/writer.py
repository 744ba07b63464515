"""Writing a report to disk: ``report.json``, ``report.md`` and ``report.html``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from shadowproxy.report.html import render_html
from shadowproxy.report.markdown import render_markdown

__all__ = ["write_report"]


def _atomic_write(path: Path, data: bytes) -> None:
    # A reader (CI, a browser refreshing) sees the old file or the new one, never half of it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the report in its three forms, each atomically.

    Parameters
    ----------
    report : mapping
        A report built by :func:`shadowproxy.report.document.build_report`.
    out_dir : Path
        The folder; created with its parents when missing.

    Returns
    -------
    list of Path
        ``report.json``, ``report.md`` and ``report.html``, in that order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Rendered before anything is written, so a rendering error leaves the old files intact.
    payloads = {
        "report.json": orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        + b"\n",
        "report.md": render_markdown(report).encode("utf-8"),
        "report.html": render_html(report).encode("utf-8"),
    }
    paths = []
    for name, data in payloads.items():
        path = out_dir / name
        _atomic_write(path, data)
        paths.append(path)
    return paths
