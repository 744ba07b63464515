"""protocol_for picks the configured protocol with the configured limits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shadowproxy import protocols
from shadowproxy.config.model import Compare, Config, Outputs, Payload, Production
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import (
    REASONS,
    JsonProtocol,
    PayloadProtocol,
    V1Protocol,
    V2Protocol,
    protocol_for,
)
from shadowproxy.tensors import TensorSpec


def config(protocol: str, **extra: object) -> Config:
    return Config(production=Production(name="m"), protocol=protocol, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "cls"), [("v1", V1Protocol), ("v2", V2Protocol), ("json", JsonProtocol)]
)
def test_protocol_for_picks_the_class(name: str, cls: type[PayloadProtocol]) -> None:
    protocol = protocol_for(config(name))
    assert type(protocol) is cls
    assert protocol.name == name


def test_protocol_for_passes_payload_limits_and_json_mapping() -> None:
    protocol = protocol_for(
        config(
            "json",
            payload=Payload(max_rows=1, rows="rows"),
            compare=Compare(features=("a", "b"), outputs=Outputs(score="s")),
        )
    )
    assert isinstance(protocol, JsonProtocol)
    assert protocol.features == ("a", "b") and protocol.outputs.score == "s"
    spec = [TensorSpec("x", "FP32", (-1, 2))]
    assert protocol.decode_request(b'{"rows": [{"a": 1, "b": 2}]}', spec).rows == 1
    with pytest.raises(PayloadError) as caught:
        protocol.decode_request(b'{"rows": [{"a": 1, "b": 2}, {"a": 1, "b": 2}]}', spec)
    assert caught.value.reason == "batch_too_large"


def test_protocol_for_refuses_unknown_protocols() -> None:
    with pytest.raises(ValueError, match="grpc"):
        protocol_for(config("grpc"))


def test_error_bodies_are_the_same_shape_everywhere() -> None:
    for name in ("v1", "v2", "json"):
        assert protocol_for(config(name)).encode_error("nope") == b'{"error":"nope"}'


def raised_reasons() -> set[str]:
    """Every literal reason passed to PayloadError in the package source."""
    found = set()
    for path in Path(protocols.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "PayloadError"
                and len(node.args) == 2
            ):
                reason = node.args[1]
                assert isinstance(reason, ast.Constant | ast.Name), f"{path.name}:{node.lineno}"
                if isinstance(reason, ast.Constant):
                    found.add(str(reason.value))
    return found


def test_reason_codes_listed_are_the_ones_raised() -> None:
    assert raised_reasons() == REASONS
