"""Which endpoint a request to a local production model is for (pure, no I/O).

v2 (Open Inference Protocol)::

    POST /v2/models/{name}[/versions/{v}]/infer   infer
    GET  /v2/health/live                          health_live
    GET  /v2/health/ready                         health_ready
    GET  /v2                                      server_metadata
    GET  /v2/models/{name}[/versions/{v}]         model_metadata
    GET  /v2/models/{name}[/versions/{v}]/ready   model_ready

v1 (KServe V1)::

    POST /v1/models/{name}:predict                infer
    GET  /v1/models/{name}                        model_ready

json: ``POST`` to any path is ``infer``.

``HEAD`` is taken wherever ``GET`` is. A known path with another method is
``method_not_allowed`` (``Route.allow`` lists the methods); an unknown path, another model's
name or another version is ``not_found``. The query string is ignored; path segments are
percent-decoded. A versioned path matches only the configured version exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

RouteKind = Literal[
    "infer",
    "health_live",
    "health_ready",
    "server_metadata",
    "model_metadata",
    "model_ready",
    "not_found",
    "method_not_allowed",
]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes.

    Attributes
    ----------
    kind : RouteKind
        The endpoint, or ``not_found`` / ``method_not_allowed``.
    allow : tuple[str, ...]
        For ``method_not_allowed``: the methods the path takes (the ``Allow`` header).
    """

    kind: RouteKind
    allow: tuple[str, ...] = ()


NOT_FOUND = Route("not_found")

# Endpoint kinds by the method that serves them.
_POST_KINDS: frozenset[RouteKind] = frozenset({"infer"})


def route(method: bytes, path: bytes, protocol: str, model_name: str, model_version: str) -> Route:
    """The endpoint of one request.

    Parameters
    ----------
    method : bytes
        The request method, e.g. ``b"POST"``.
    path : bytes
        The request target (path, optionally with a query string).
    protocol : str
        ``v1``, ``v2`` or ``json``.
    model_name, model_version : str
        The served model; other names (or versions) are ``not_found``.

    Returns
    -------
    Route
    """
    if protocol == "json":
        return Route("infer") if method == b"POST" else Route("method_not_allowed", ("POST",))
    target = path.split(b"?", 1)[0].split(b"#", 1)[0]
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return NOT_FOUND
    segments = [unquote(part) for part in text.split("/")]
    if not segments or segments[0] != "":
        return NOT_FOUND
    segments = segments[1:]
    if protocol == "v2":
        kind = _v2_kind(segments, model_name, model_version)
    elif protocol == "v1":
        kind = _v1_kind(segments, model_name)
    else:
        return NOT_FOUND
    if kind is None:
        return NOT_FOUND
    if kind in _POST_KINDS:
        return Route(kind) if method == b"POST" else Route("method_not_allowed", ("POST",))
    # RFC 9110 §9.1: HEAD goes wherever GET does (the answer is sent without its body).
    if method in (b"GET", b"HEAD"):
        return Route(kind)
    return Route("method_not_allowed", ("GET", "HEAD"))


def _v2_kind(segments: list[str], model_name: str, model_version: str) -> RouteKind | None:
    if segments == ["v2"]:
        return "server_metadata"
    if segments in (["v2", "health", "live"], ["v2", "health", "ready"]):
        return "health_live" if segments[2] == "live" else "health_ready"
    if len(segments) < 3 or segments[:2] != ["v2", "models"] or segments[2] != model_name:
        return None
    rest = segments[3:]
    if len(rest) >= 2 and rest[0] == "versions":
        if rest[1] != model_version or not model_version:
            return None
        rest = rest[2:]
    if not rest:
        return "model_metadata"
    if rest == ["infer"]:
        return "infer"
    if rest == ["ready"]:
        return "model_ready"
    return None


def _v1_kind(segments: list[str], model_name: str) -> RouteKind | None:
    if len(segments) != 3 or segments[:2] != ["v1", "models"]:
        return None
    last = segments[2]
    if last == model_name:
        return "model_ready"
    if last == f"{model_name}:predict":
        return "infer"
    return None
