"""One JSON document over HTTP, for the report's sources (admin listeners, Prometheus).

Blocking ``urllib``: ``shadowproxy report`` is a command that reads a few documents and
exits, so an event loop would add nothing. Every failure is a StateError naming the source
and the URL.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from shadowproxy.errors import StateError


def fetch_json(
    url: str,
    source: str,
    what: str,
    *,
    form: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Any:
    """GET ``url`` (or POST ``form`` to it, URL-encoded) and decode the JSON answer.

    ``source`` is the report source being read and ``what`` the server it names ("the
    admin listener", "Prometheus"); both appear in every error message.

    Raises
    ------
    StateError
        When the server cannot be reached, answers an HTTP error (with the ``error`` of a
        JSON error body, as Prometheus sends, in the message) or answers something other
        than JSON.
    """
    data = None if form is None else urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc.read())
        raise StateError(
            f"{source}: {what} at {url} answered HTTP {exc.code}"
            + (f": {detail}" if detail else "")
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise StateError(f"{source}: cannot read {what} at {url}: {exc}") from exc
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{source}: {what} at {url} did not answer JSON") from exc


def _error_detail(body: bytes) -> str:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return str(answer.get("error", "")) if isinstance(answer, dict) else ""
