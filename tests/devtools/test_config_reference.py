"""The config reference in docs/config.md is generated from the config types and kept current."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowproxy.config.gates import GATE_METRICS
from shadowproxy.config.model import Config, spec
from shadowproxy.devtools import config_reference as ref

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"
FULL = ROOT / "configs" / "full.yaml"
ROW_KEY = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)


def _documented_keys(markdown: str) -> set[str]:
    return set(ROW_KEY.findall(markdown))


def _leaf_paths(data: Any, path: str, documented: set[str]) -> list[str]:
    """Leaf keys of a YAML document, list indexes written as ``[]``.

    A mapping that is itself a documented key of a non-section type (``headers``) is a leaf.
    """
    if isinstance(data, dict) and (not path or path not in documented or _is_section(path)):
        found: list[str] = []
        for key, value in data.items():
            found += _leaf_paths(value, f"{path}.{key}" if path else str(key), documented)
        return found
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        found = []
        for item in data:
            found += _leaf_paths(item, path + "[]", documented)
        return found
    return [path]


@pytest.fixture(scope="module")
def sections_by_path() -> dict[str, ref.Entry]:
    return {entry.path: entry for entry in ref.entries()}


def _is_section(path: str) -> bool:
    return any(entry.path == path and entry.section for entry in ref.entries())


def test_committed_reference_is_current() -> None:
    document = DOC.read_text(encoding="utf-8")
    assert ref.BEGIN in document and ref.END in document
    assert ref.generated_block(document) == ref.render(), (
        "docs/config.md is out of date: run "
        "`python -m shadowproxy.devtools.config_reference --write`"
    )


def test_hand_written_intro_is_kept_above_the_block() -> None:
    document = DOC.read_text(encoding="utf-8")
    intro = document[: document.index(ref.BEGIN)]
    assert intro.startswith("# ") and len(intro.splitlines()) > 5


def test_every_leaf_of_full_yaml_is_documented() -> None:
    documented = _documented_keys(DOC.read_text(encoding="utf-8"))
    data = yaml.safe_load(FULL.read_text(encoding="utf-8"))
    leaves = _leaf_paths(data, "", documented)
    assert len(leaves) > 80
    missing = sorted({leaf for leaf in leaves if leaf not in documented})
    assert not missing, f"keys of configs/full.yaml missing from docs/config.md: {missing}"
    # Commented-out keys of full.yaml are documented too.
    assert {"production.model.path", "compare.reference"} <= documented


def test_every_config_field_is_a_row() -> None:
    documented = _documented_keys(ref.render())

    top = {field.name for field in dataclasses.fields(Config)} - {"source"}  # loader-set
    assert "source" not in documented
    assert top <= documented
    for expected in (
        "candidates[].executor.max_batch",
        "candidates[].breaker.failures",
        "baseline.breaker.reset_s",
        "production.model.sha256",
        "promotion.gates[].metric",
        "compare.snapshot.interval_s",
    ):
        assert expected in documented


def test_rows_carry_type_default_constraints_and_doc(sections_by_path: dict[str, Any]) -> None:
    e = sections_by_path
    rate = e["candidates[].sample_rate"]
    assert (rate.type, rate.default, rate.constraints) == ("number", "`1`", "0 ≤ x ≤ 1")
    assert "request id" in rate.doc
    assert e["baseline.sample_rate"].default == "`0.1`"  # the subclass override wins
    assert e["candidates[].timeout_ms"].constraints == "0 < x ≤ 86400000"
    assert e["promotion.confidence"].constraints == "0 < x < 1"
    assert e["production.name"].default == "required"
    assert e["baseline.url"].default == "required"
    assert e["protocol"].constraints == "one of `v1`, `v2`, `json`"
    assert e["candidates[].executor.kind"].constraints == "one of `process`, `thread`"
    assert e["candidates[].methods"].default == "`[POST]`"
    assert e["candidates[].methods"].type == "list of string"
    assert e["candidates[].headers"].type == "mapping of string to string"
    assert e["limits.max_body_bytes"].default == "`10485760` (10 MiB)"
    assert e["baseline"].type == "mapping or null"
    assert e["candidates"].type == "list of mappings"
    assert e["compare.snapshot.path"].type == "path or null"


def test_nested_default_instances_give_their_own_defaults(
    sections_by_path: dict[str, Any],
) -> None:
    assert sections_by_path["production.executor.kind"].default == "`thread`"
    assert sections_by_path["candidates[].executor.kind"].default == "`process`"
    assert sections_by_path["admin.port"].default == "`9090`"
    assert sections_by_path["listen.port"].default == "`8080`"


def test_gate_metrics_are_listed() -> None:
    documented = _documented_keys(ref.render())
    assert set(GATE_METRICS) <= documented


@dataclasses.dataclass(frozen=True)
class _Inner:
    depth: int = spec(3, "how deep | pipes are escaped", ge=1, le=9)


@dataclasses.dataclass(frozen=True)
class _Outer:
    """Outer docstring."""

    inner: tuple[_Inner, ...] = spec((), "inner list")
    mode: str = spec("a", "a mode", choices=("a", "b"))


def test_a_new_key_changes_the_output() -> None:
    text = ref.render(_Outer)
    assert "Outer docstring." in text
    assert (
        "| `inner[].depth` | integer | `3` | 1 ≤ x ≤ 9 | how deep \\| pipes are escaped |" in text
    )
    assert "| `mode` | string | `a` | one of `a`, `b` | a mode |" in text
    assert text != ref.render()


def test_replace_block_keeps_the_intro_and_is_idempotent() -> None:
    block = ref.render()
    fresh = ref.replace_block("# Title\n\nintro\n", block)
    assert fresh.startswith("# Title\n\nintro\n")
    assert ref.generated_block(fresh) == block
    stale = fresh.replace("| `listen.host` |", "| `listen.hostname` |")
    assert ref.generated_block(stale) != block
    assert ref.replace_block(stale, block) == fresh
    assert ref.replace_block(fresh, block) == fresh


def test_cli_prints_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ref.main([]) == 0
    assert capsys.readouterr().out == ref.render()
    target = tmp_path / "config.md"
    target.write_text(f"# Config\n\nintro\n\n{ref.BEGIN}\nold\n{ref.END}\n", encoding="utf-8")
    assert ref.main(["--check", "--file", str(target)]) == 1
    assert ref.main(["--write", "--file", str(target)]) == 0
    written = target.read_text(encoding="utf-8")
    assert written.startswith("# Config\n\nintro\n")
    assert ref.main(["--check", "--file", str(target)]) == 0
    assert ref.main(["--check", "--file", str(DOC)]) == 0
