"""Payload protocols: request and response bodies to and from model tensors (pure, no I/O).

``protocol_for(config)`` gives the configured :class:`PayloadProtocol`:

* ``v1`` — KServe V1 (:mod:`~shadowproxy.protocols.v1`),
* ``v2`` — Open Inference Protocol REST (:mod:`~shadowproxy.protocols.v2`),
* ``json`` — custom JSON rows mapped by config (:mod:`~shadowproxy.protocols.custom`).

Every decoding failure is a :class:`~shadowproxy.errors.PayloadError` whose ``reason`` is one
of :data:`REASONS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shadowproxy.config.model import Config, Outputs, Payload
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


@dataclass(frozen=True)
class ProtocolSpec:
    """Everything that selects and configures a payload protocol, as plain data.

    A worker process rebuilds the proxy's protocol from it (sent as JSON, never pickled),
    so request bodies can be decoded there instead of on the proxy's event loop.
    """

    name: str
    payload: Payload
    features: tuple[str, ...] = ()
    outputs: Outputs = Outputs()

    @classmethod
    def from_config(cls, config: Config) -> ProtocolSpec:
        return cls(config.protocol, config.payload, config.compare.features, config.compare.outputs)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ProtocolSpec:
        return cls(
            values["name"],
            Payload(**values["payload"]),
            tuple(values["features"]),
            Outputs(**values["outputs"]),
        )

    def build(self) -> PayloadProtocol:
        if self.name == "v2":
            return V2Protocol(self.payload)
        if self.name == "v1":
            return V1Protocol(self.payload)
        if self.name == "json":
            return JsonProtocol(self.payload, self.features, self.outputs)
        raise ValueError(f"unknown protocol {self.name!r}")


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
    return ProtocolSpec.from_config(config).build()


__all__ = [
    "LABEL_NAMES",
    "REASONS",
    "SCORE_NAMES",
    "Comparable",
    "Decoded",
    "JsonProtocol",
    "PayloadProtocol",
    "ProtocolSpec",
    "Route",
    "RouteKind",
    "V1Protocol",
    "V2Protocol",
    "protocol_for",
    "route",
]
