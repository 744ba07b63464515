"""One JSON document over HTTP, for the report's sources (admin listeners, Prometheus).

Blocking ``urllib``: ``shadowproxy report`` is a command that reads a few documents and
exits, so an event loop would add nothing. Every failure is a StateError naming the source
and the URL.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from shadowproxy.errors import StateError

# A snapshot is a few MB per target and a Prometheus answer less: this only stops a
# runaway answer from taking the machine's memory.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
_CHUNK_BYTES = 1 << 16


def fetch_json(
    url: str,
    source: str,
    what: str,
    *,
    form: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Any:
    """GET ``url`` (or POST ``form`` to it, URL-encoded) and decode the JSON answer.

    ``source`` is the report source being read and ``what`` the server it names ("the
    admin listener", "Prometheus"); both appear in every error message.

    ``timeout_s`` bounds the whole exchange, not each read, so a server that trickles its
    answer cannot hold the report; ``max_bytes`` bounds the answer.

    Raises
    ------
    StateError
        When the server cannot be reached, answers an HTTP error (with the ``error`` of a
        JSON error body, as Prometheus sends, in the message), answers too slowly or too
        much, or answers something other than JSON.
    """
    data = None if form is None else urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = _read_bounded(response, time.monotonic() + timeout_s, max_bytes)
    except _TooSlow as exc:
        raise StateError(
            f"{source}: {what} at {url} did not send its whole answer within {timeout_s:g} s"
        ) from exc
    except _TooLarge as exc:
        raise StateError(f"{source}: {what} at {url} answered more than {max_bytes} bytes") from exc
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


class _TooSlow(Exception):
    pass


class _TooLarge(Exception):
    pass


def _read_bounded(response: http.client.HTTPResponse, deadline: float, max_bytes: int) -> bytes:
    """The body, read as it arrives (``read1``: one receive at a time), within both bounds."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        if time.monotonic() > deadline:
            raise _TooSlow
        chunks.append(chunk)
    return b"".join(chunks)


def _error_detail(body: bytes) -> str:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return str(answer.get("error", "")) if isinstance(answer, dict) else ""
