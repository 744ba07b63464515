"""Every example config in configs/ loads, and full.yaml documents every key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from shadowproxy.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
# Helm values files are the chart's input, not shadowproxy configs (tests/deploy checks them).
HELM_VALUES = {CONFIGS / "k8s" / "values.yaml"}
EXAMPLES = sorted(
    p for p in [*CONFIGS.glob("**/*.yaml"), *CONFIGS.glob("**/*.yml")] if p not in HELM_VALUES
)


def test_the_examples_are_found() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"minimal.yaml", "full.yaml", "local-dev.yaml", "config.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(CONFIGS)) for p in EXAMPLES])
def test_example_loads(path: Path) -> None:
    config = load_config(path)
    assert config.source == path


def _config_dataclasses() -> set[type]:
    """Every dataclass reachable from :class:`Config` through field types."""
    found: set[type] = set()
    pending: list[type] = [Config]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.add(cls)
        for hint in typing.get_type_hints(cls).values():
            pending.extend(_dataclasses_in(hint))
    return found


def _dataclasses_in(hint: object) -> list[type]:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    return [found for arg in typing.get_args(hint) for found in _dataclasses_in(arg)]


def test_full_example_mentions_every_key() -> None:
    # A key may appear commented out (e.g. production.model, which excludes url).
    text = (CONFIGS / "full.yaml").read_text(encoding="utf-8")
    keys = {
        spec.name
        for cls in _config_dataclasses()
        for spec in dataclasses.fields(cls)
        if (cls, spec.name) != (Config, "source")  # set by the loader, not by the file
    }
    missing = sorted(key for key in keys if not re.search(rf"(^|[\s{{,#]){key}:", text, re.M))
    assert not missing, f"configs/full.yaml does not document: {', '.join(missing)}"


def test_local_dev_is_local() -> None:
    config = load_config(CONFIGS / "local-dev.yaml")
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9090)
    assert config.production.url == "http://127.0.0.1:8501"
    assert [c.url for c in config.candidates] == ["http://127.0.0.1:8502"]
    assert config.pair_log.path is not None
    assert config.pair_log.path.is_relative_to("/tmp")
