"""Endpoint routing for a local production model."""

from __future__ import annotations

import pytest

from shadowproxy.protocols import Route, route

V2_TABLE = [
    (b"POST", b"/v2/models/churn/infer", "infer"),
    (b"POST", b"/v2/models/churn/versions/3/infer", "infer"),
    (b"POST", b"/v2/models/churn/infer?trace=1", "infer"),
    (b"POST", b"/v2/models/ch%75rn/infer", "infer"),
    (b"GET", b"/v2/health/live", "health_live"),
    (b"GET", b"/v2/health/ready", "health_ready"),
    (b"GET", b"/v2", "server_metadata"),
    (b"GET", b"/v2?x=y", "server_metadata"),
    (b"GET", b"/v2/models/churn", "model_metadata"),
    (b"GET", b"/v2/models/churn/versions/3", "model_metadata"),
    (b"GET", b"/v2/models/churn/ready", "model_ready"),
    (b"GET", b"/v2/models/churn/versions/3/ready", "model_ready"),
    (b"POST", b"/v2/models/other/infer", "not_found"),
    (b"POST", b"/v2/models/churn/versions/4/infer", "not_found"),
    (b"GET", b"/v2/models/other", "not_found"),
    (b"GET", b"/v2/models/churn/versions", "not_found"),
    (b"GET", b"/v2/models/churn/explain", "not_found"),
    (b"GET", b"/v2/health", "not_found"),
    (b"GET", b"/v2/", "not_found"),
    (b"GET", b"/", "not_found"),
    (b"GET", b"v2", "not_found"),
    (b"GET", b"/v2/models/\xff", "not_found"),
    (b"POST", b"/v1/models/churn:predict", "not_found"),
    (b"GET", b"/v2/models/churn/infer", "method_not_allowed"),
    (b"POST", b"/v2/health/live", "method_not_allowed"),
    (b"PUT", b"/v2/models/churn", "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "kind"), V2_TABLE)
def test_v2_routes(method: bytes, path: bytes, kind: str) -> None:
    assert route(method, path, "v2", "churn", "3").kind == kind


def test_method_not_allowed_lists_the_allowed_method() -> None:
    assert route(b"GET", b"/v2/models/churn/infer", "v2", "churn", "3") == Route(
        "method_not_allowed", ("POST",)
    )
    assert route(b"DELETE", b"/v2/health/ready", "v2", "churn", "3").allow == ("GET", "HEAD")
    assert route(b"POST", b"/v2/health/ready", "v2", "churn", "3").allow == ("GET", "HEAD")
    assert route(b"HEAD", b"/v2/models/churn/infer", "v2", "churn", "3").allow == ("POST",)


@pytest.mark.parametrize("path", [b"/v2/health/ready", b"/v2", b"/v2/models/churn/ready"])
def test_head_goes_wherever_get_goes(path: bytes) -> None:
    assert route(b"HEAD", path, "v2", "churn", "3") == route(b"GET", path, "v2", "churn", "3")
    assert route(b"HEAD", b"/v1/models/churn", "v1", "churn", "") == Route("model_ready")


def test_versioned_paths_need_a_configured_version() -> None:
    assert route(b"POST", b"/v2/models/churn/versions/3/infer", "v2", "churn", "").kind == (
        "not_found"
    )
    assert route(b"POST", b"/v2/models/churn/infer", "v2", "churn", "").kind == "infer"


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        (b"POST", b"/v1/models/churn:predict", "infer"),
        (b"POST", b"/v1/models/churn:predict?x=1", "infer"),
        (b"GET", b"/v1/models/churn", "model_ready"),
        (b"GET", b"/v1/models/churn:predict", "method_not_allowed"),
        (b"POST", b"/v1/models/churn", "method_not_allowed"),
        (b"POST", b"/v1/models/other:predict", "not_found"),
        (b"POST", b"/v1/models/churn:explain", "not_found"),
        (b"GET", b"/v1/models", "not_found"),
        (b"POST", b"/v2/models/churn/infer", "not_found"),
    ],
)
def test_v1_routes(method: bytes, path: bytes, kind: str) -> None:
    assert route(method, path, "v1", "churn", "3").kind == kind


def test_json_posts_anywhere_are_infer() -> None:
    assert route(b"POST", b"/", "json", "churn", "").kind == "infer"
    assert route(b"POST", b"/score/batch?x=1", "json", "churn", "").kind == "infer"
    assert route(b"GET", b"/score", "json", "churn", "") == Route("method_not_allowed", ("POST",))


def test_unknown_protocol_is_not_found() -> None:
    assert route(b"POST", b"/v2/models/churn/infer", "grpc", "churn", "").kind == "not_found"
