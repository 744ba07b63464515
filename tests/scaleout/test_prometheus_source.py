"""A Prometheus source that cannot give the state is refused, saying why (real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowproxy.compare.sources import read_sources
from shadowproxy.config import config_from_dict
from shadowproxy.errors import StateError
from tests.scaleout.prometheus import prometheus_server
from tests.support.proxy import free_port

CONFIG = config_from_dict(
    {
        "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
        "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
    }
)


def refusal(source: str) -> StateError:
    with pytest.raises(StateError) as info:
        read_sources([source], CONFIG, None, timeout_s=5)
    assert str(info.value).startswith(source)
    return info.value


def test_a_server_without_replicas_or_a_bad_matcher_is_refused(tmp_path: Path) -> None:
    with prometheus_server(tmp_path) as prom:
        empty = refusal(prom.source)
        assert "holds no shadowproxy comparator state" in str(empty)
        scoped = refusal(prom.source + '?match=job="churn-shadow"')
        assert 'matching job="churn-shadow"' in str(scoped)
        # Prometheus's own parse error comes back in the message.
        bad = refusal(prom.source + "?match=job=~")
        assert "answered HTTP 400" in str(bad) and "parse error" in str(bad)
        assert bad.__cause__ is not None


def test_an_unreachable_server_is_named() -> None:
    source = f"prometheus+http://127.0.0.1:{free_port()}"
    error = refusal(source)
    assert "cannot read" in str(error) and "/api/v1/query" in str(error)
