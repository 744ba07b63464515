"""Where ``shadowproxy report`` reads comparator state from.

A source is a snapshot file, an admin base URL (``http://host:9090``, read from
``/admin/snapshot``), or a Prometheus server (``prometheus+http://host:9090``). Several
sources are merged exactly. Prometheus holds only the exported gauges, not the mergeable
state (reservoirs, sketches, histograms) the statistics need, so such a source is refused
with a message that says so, rather than producing a report from less evidence.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from shadowproxy.compare.persist import read_snapshot_file
from shadowproxy.errors import StateError

SNAPSHOT_PATH = "/admin/snapshot"


def read_source(source: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The snapshot document of one source; StateError naming the source otherwise."""
    if source.startswith("prometheus+"):
        raise StateError(
            f"{source}: a Prometheus server holds the exported gauges only, not the "
            "comparator state the statistics need; use the admin URL or a snapshot file"
        )
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        if not url.endswith(SNAPSHOT_PATH):
            url += SNAPSHOT_PATH
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                data = orjson.loads(response.read())
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise StateError(f"{source}: cannot read {url}: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise StateError(f"{source}: {url} did not answer JSON") from exc
        if not isinstance(data, dict):
            raise StateError(f"{source}: {url} did not answer a snapshot object")
        return data
    return read_snapshot_file(Path(source))
