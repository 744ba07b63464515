"""Payload protocols: request and response bodies to and from model tensors (pure, no I/O).

``protocol_for(config)`` gives the configured :class:`PayloadProtocol`:

* ``v1`` — KServe V1 (:mod:`~shadowproxy.protocols.v1`),
* ``v2`` — Open Inference Protocol REST (:mod:`~shadowproxy.protocols.v2`),
* ``json`` — custom JSON rows mapped by config (:mod:`~shadowproxy.protocols.custom`).

Every decoding failure is a :class:`~shadowproxy.errors.PayloadError` whose ``reason`` is one
of :data:`REASONS`.
"""

from __future__ import annotations

from shadowproxy.config.model import Config
from shadowproxy.protocols.base import Comparable, Decoded, PayloadProtocol
from shadowproxy.protocols.custom import JsonProtocol
from shadowproxy.protocols.routes import Route, RouteKind, route
from shadowproxy.protocols.selection import LABEL_NAMES, SCORE_NAMES
from shadowproxy.protocols.v1 import V1Protocol
from shadowproxy.protocols.v2 import V2Protocol

#: Every ``PayloadError.reason`` this package raises.
REASONS: frozenset[str] = frozenset(
    {
        # requests
        "bad_json",  # not JSON, or not UTF-8
        "too_deep",  # nesting deeper than payload.max_depth
        "bad_body",  # wrong top-level type, missing or mistyped envelope field
        "unknown_input",  # an input name the model does not have
        "missing_input",  # a model input (json: a feature) the request lacks
        "duplicate_input",  # v2: one input name twice
        "bad_shape",  # shape does not fit the data or the model
        "bad_dtype",  # datatype differs from the model's, or values of the wrong type
        "ragged",  # nested lists of uneven lengths
        "nonfinite",  # NaN or infinity, unless payload.nonfinite is allow
        "int_overflow",  # an integer that does not fit the input's dtype
        "empty_batch",  # no rows
        "batch_too_large",  # more than payload.max_rows rows
        "bad_model",  # json: the model or config cannot use the protocol
        # responses
        "bad_response",  # not the protocol's response shape (or an error body)
        "bad_selector",  # a set selector names nothing, or nothing to compare was found
        "bad_output",  # a local model's outputs cannot be written
    }
)


def protocol_for(config: Config) -> PayloadProtocol:
    """The payload protocol selected by ``config.protocol``.

    Parameters
    ----------
    config : Config
        The validated configuration.

    Returns
    -------
    PayloadProtocol
        A stateless protocol object, safe to share.

    Raises
    ------
    ValueError
        ``config.protocol`` is not ``v1``, ``v2`` or ``json``.
    """
    if config.protocol == "v2":
        return V2Protocol(config.payload)
    if config.protocol == "v1":
        return V1Protocol(config.payload)
    if config.protocol == "json":
        return JsonProtocol(config.payload, config.compare.features, config.compare.outputs)
    raise ValueError(f"unknown protocol {config.protocol!r}")


__all__ = [
    "LABEL_NAMES",
    "REASONS",
    "SCORE_NAMES",
    "Comparable",
    "Decoded",
    "JsonProtocol",
    "PayloadProtocol",
    "Route",
    "RouteKind",
    "V1Protocol",
    "V2Protocol",
    "protocol_for",
    "route",
]
