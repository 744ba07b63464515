"""Pair records to and from JSON-able dicts, one pair-log line each (pure, no I/O).

The line layout, schema ``shadowproxy.pair/v1``::

    {"schema": "shadowproxy.pair/v1",
     "request_id": "...", "started_at": 1718000000.123, "method": "POST", "path": "/v2/...",
     "request": {"content_type": "application/json", "body": BODY},
     "production": EXCHANGE or null,
     "shadows": {"<target name>": EXCHANGE, ...}}

    EXCHANGE = {"role", "name", "version", "outcome", "status", "latency_s",
                "content_type", "detail", "body_truncated", "body": BODY, "cost": COST}

    COST = null | {"cpu_s", "compute_s", "queue_s", "ipc_s", "rss_bytes", "threads",
                   "child_processes"}       each a number or null (unknown)

    BODY = {"text": "..."}          valid UTF-8
         | {"base64": "..."}        anything else
         + "truncated": true, "size": <bytes before redaction and truncation>
                                    when the log kept only the first max_body_bytes
         + "redacted": true         when redaction changed the body

Decoding an unredacted, untruncated line gives back a record equal to the one encoded.
Floats that JSON cannot hold (NaN, infinities) are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from shadowproxy.errors import ShadowProxyError
from shadowproxy.pairing.record import OUTCOMES, Cost, Exchange, PairRecord, Role
from shadowproxy.pairing.redact import RedactRules, compile_rules, redact_body

SCHEMA = "shadowproxy.pair/v1"
_ROLES: tuple[Role, ...] = ("production", "candidate", "baseline")


class PairLogError(ShadowProxyError):
    """A pair-log line or record could not be decoded, or the log was misused."""


def encode_body(body: bytes, *, max_body_bytes: int, size: int | None = None) -> dict[str, Any]:
    """Encode a body as ``{"text": ...}`` or ``{"base64": ...}``, cut to ``max_body_bytes``.

    Parameters
    ----------
    body : bytes
        The body to store (already redacted if redaction applies).
    max_body_bytes : int
        Longest body kept; longer ones are cut and flagged ``"truncated"``.
    size : int, optional
        The size reported for a truncated body; defaults to ``len(body)``. The pair log
        passes the size as received, before redaction changed it.
    """
    truncated = len(body) > max_body_bytes
    kept = body[:max_body_bytes] if truncated else body
    out: dict[str, Any]
    try:
        out = {"text": kept.decode("utf-8")}
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data":
            # The cut fell inside a multi-byte character: keep the text up to it, so a
            # text body stays readable rather than turning into base64.
            # Everything before the first error decoded, so this prefix is valid UTF-8.
            out = {"text": kept[: exc.start].decode("utf-8")}
        else:
            out = {"base64": base64.b64encode(kept).decode("ascii")}
    if truncated:
        out["truncated"] = True
        out["size"] = len(body) if size is None else size
    return out


def decode_body(data: Mapping[str, Any]) -> bytes:
    """Bytes of a body encoded by :func:`encode_body` (the kept prefix if truncated)."""
    if "text" in data:
        text = data["text"]
        if not isinstance(text, str):
            raise PairLogError("body text is not a string")
        return text.encode("utf-8")
    if "base64" in data:
        encoded = data["base64"]
        if not isinstance(encoded, str):
            raise PairLogError("body base64 is not a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PairLogError(f"body base64 is invalid: {exc}") from exc
    raise PairLogError("body has neither 'text' nor 'base64'")


def _log_body(body: bytes, max_body_bytes: int, rules: RedactRules) -> dict[str, Any]:
    redacted, changed = redact_body(body, rules)
    out = encode_body(redacted, max_body_bytes=max_body_bytes, size=len(body))
    if changed:
        out["redacted"] = True
    return out


def _float_out(value: float) -> float | str:
    # orjson writes NaN and infinities as null, which would not decode back to a float.
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _float_in(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PairLogError(f"{name} is not a number")
    if isinstance(value, str) and value not in ("nan", "inf", "-inf"):
        raise PairLogError(f"{name} is not a number: {value!r}")
    return float(value)


def exchange_to_dict(
    exchange: Exchange, *, max_body_bytes: int, redact: Iterable[str] | RedactRules = ()
) -> dict[str, Any]:
    """One exchange as a JSON-able dict (see the module docstring for the layout)."""
    return {
        "role": exchange.role,
        "name": exchange.name,
        "version": exchange.version,
        "outcome": exchange.outcome,
        "status": exchange.status,
        "latency_s": _float_out(exchange.latency_s),
        "content_type": exchange.content_type,
        "detail": _log_detail(exchange, compile_rules(redact)),
        "body_truncated": exchange.body_truncated,
        "body": _log_body(exchange.body, max_body_bytes, compile_rules(redact)),
        "cost": None if exchange.cost is None else _cost_out(exchange.cost),
    }


def _log_detail(exchange: Exchange, rules: RedactRules) -> str:
    """The detail to log. A refused input's message may quote a value of the body
    (``inputs[0].data: 4.2e+39 is not a finite FP32 value``): with redaction on, only where
    the problem is stays, never what."""
    detail = exchange.detail
    if not rules or exchange.outcome != "invalid" or not detail:
        return detail
    where, _, _ = detail.rpartition(": ")
    return f"{where}: [redacted]" if where else REDACTED_DETAIL


REDACTED_DETAIL = "[redacted]"

_COST_FIELDS = tuple(f.name for f in dataclasses.fields(Cost))
_COST_INTS = ("threads", "child_processes")


def _cost_out(cost: Cost) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _COST_FIELDS:
        value = getattr(cost, name)
        out[name] = _float_out(value) if isinstance(value, float) else value
    return out


def _cost_in(data: Any) -> Cost | None:
    """The cost written by :func:`_cost_out`; absent in logs written before costs existed."""
    if data is None:
        return None
    data = _mapping(data, "cost")
    values: dict[str, Any] = {}
    for name in _COST_FIELDS:
        value = data.get(name)
        if value is None:
            values[name] = None
        elif name in _COST_INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise PairLogError(f"cost.{name} is not an integer")
            values[name] = value
        else:
            values[name] = _float_in(value, f"cost.{name}")
    return Cost(**values)


def record_to_dict(
    record: PairRecord, *, max_body_bytes: int, redact: Iterable[str] | RedactRules = ()
) -> dict[str, Any]:
    """A pair record as a JSON-able dict, ready for :func:`orjson.dumps`.

    Parameters
    ----------
    record : PairRecord
        The record; not modified.
    max_body_bytes : int
        Bodies longer than this (after redaction) keep only their first bytes.
    redact : iterable of str or RedactRules
        Dotted JSON field paths redacted in the request body and every exchange body
        (see :mod:`shadowproxy.pairing.redact`).
    """
    rules = compile_rules(redact)
    return {
        "schema": SCHEMA,
        "request_id": record.request_id,
        "started_at": _float_out(record.started_at),
        "method": record.method,
        "path": record.path,
        "request": {
            "content_type": record.request_content_type,
            "body": _log_body(record.request_body, max_body_bytes, rules),
        },
        "production": (
            None
            if record.production is None
            else exchange_to_dict(record.production, max_body_bytes=max_body_bytes, redact=rules)
        ),
        "shadows": {
            name: exchange_to_dict(exchange, max_body_bytes=max_body_bytes, redact=rules)
            for name, exchange in record.shadows.items()
        },
    }


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise PairLogError(f"{key} is not a string")
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PairLogError(f"{name} is not an object")
    return value


def exchange_from_dict(data: Mapping[str, Any]) -> Exchange:
    """The exchange encoded by :func:`exchange_to_dict`.

    A body the log truncated comes back as its kept prefix with ``body_truncated`` set,
    so a reader never mistakes it for the whole answer.
    """
    try:
        role = _str(data, "role")
        outcome = _str(data, "outcome")
        if role not in _ROLES:
            raise PairLogError(f"unknown role {role!r}")
        if outcome not in OUTCOMES:
            raise PairLogError(f"unknown outcome {outcome!r}")
        status = data["status"]
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise PairLogError("status is not an integer")
        body = _mapping(data["body"], "body")
        body_truncated = data["body_truncated"]
        if not isinstance(body_truncated, bool):
            raise PairLogError("body_truncated is not a boolean")
        return Exchange(
            role=role,
            name=_str(data, "name"),
            version=_str(data, "version"),
            outcome=outcome,
            status=status,
            latency_s=_float_in(data["latency_s"], "latency_s"),
            body=decode_body(body),
            content_type=_str(data, "content_type"),
            detail=_str(data, "detail"),
            body_truncated=body_truncated or body.get("truncated") is True,
            cost=_cost_in(data.get("cost")),
        )
    except KeyError as exc:
        raise PairLogError(f"exchange is missing {exc.args[0]!r}") from exc


def record_from_dict(data: Mapping[str, Any]) -> PairRecord:
    """The record encoded by :func:`record_to_dict`.

    Raises
    ------
    PairLogError
        The dict is not a ``shadowproxy.pair/v1`` record or a field has the wrong type.
    """
    data = _mapping(data, "record")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise PairLogError(f"unsupported schema {schema!r} (expected {SCHEMA!r})")
    try:
        request = _mapping(data["request"], "request")
        production = data["production"]
        shadows = _mapping(data["shadows"], "shadows")
        return PairRecord(
            request_id=_str(data, "request_id"),
            started_at=_float_in(data["started_at"], "started_at"),
            method=_str(data, "method"),
            path=_str(data, "path"),
            request_body=decode_body(_mapping(request["body"], "request body")),
            request_body_truncated=bool(_mapping(request["body"], "request body").get("truncated")),
            request_content_type=_str(request, "content_type"),
            production=(
                None
                if production is None
                else exchange_from_dict(_mapping(production, "production"))
            ),
            shadows={
                name: exchange_from_dict(_mapping(exchange, f"shadow {name!r}"))
                for name, exchange in shadows.items()
            },
        )
    except KeyError as exc:
        raise PairLogError(f"record is missing {exc.args[0]!r}") from exc


def dumps_record(
    record: PairRecord, *, max_body_bytes: int, redact: Iterable[str] | RedactRules = ()
) -> bytes:
    """One pair-log line: the record as compact JSON followed by a newline."""
    return orjson.dumps(
        record_to_dict(record, max_body_bytes=max_body_bytes, redact=redact),
        option=orjson.OPT_APPEND_NEWLINE,
    )


def loads_record(line: bytes | str) -> PairRecord:
    """The record held in one pair-log line.

    Raises
    ------
    PairLogError
        The line is not JSON or not a valid record.
    """
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise PairLogError(f"not JSON: {exc}") from exc
    return record_from_dict(data)
