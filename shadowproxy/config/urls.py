"""Reading a base URL given by an operator (config upstreams, ``replay --target``).

Messages never quote the URL back: its userinfo may hold a password.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def split_url(url: str) -> tuple[SplitResult, int | None] | str:
    """The parts and port of ``url``, or what keeps it from being read as a URL."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError:
        return "is not a valid URL (check the host and port)"


def base_problem(url: str, port: int | None) -> str | None:
    """What keeps a URL with a scheme and a host from being a base URL, if anything:
    request paths are appended to it, so it has no query or fragment of its own."""
    if port == 0:
        return "port 0 is not a valid destination"
    if "?" in url:
        return "must not have a query string (give a base URL; request paths are appended)"
    if "#" in url:
        return "must not have a fragment"
    return None
