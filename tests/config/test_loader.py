"""The config loader: every rule gives its exact line, all problems come at once."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shadowproxy.config import Config, config_from_dict, load_config, redacted_config
from shadowproxy.config import model as config_model
from shadowproxy.config.gates import GATE_METRICS
from shadowproxy.errors import ConfigError

PROD = 'production: {name: churn, url: "http://prod.svc:8080"}'
CAND = 'candidates: [{name: churn-rc, url: "http://cand.svc:8080"}]'
HEX = "ab" * 32


def write(tmp_path: Path, text: str, name: str = "shadowproxy.yaml") -> Path:
    file = tmp_path / name
    file.write_text(textwrap.dedent(text), encoding="utf-8")
    return file


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def problem_lines(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value).splitlines()


def cand(extra: str) -> str:
    """A config whose single remote candidate has the flow-mapping entries ``extra``."""
    return f'{PROD}\ncandidates: [{{name: churn-rc, url: "http://cand.svc:8080", {extra}}}]\n'


def local_cand(model: str, extra: str = "") -> str:
    """A config whose single candidate is a local model given as ``model``, with the
    flow-mapping entries ``extra``."""
    more = f", {extra}" if extra else ""
    return f"{PROD}\ncandidates: [{{name: churn-rc, model: {model}{more}}}]\n"


PINNED = f"{{path: m.onnx, sha256: {HEX}}}"


BAD_CONFIGS: list[tuple[str, str, list[str]]] = [
    # ---- unknown keys
    (
        "unknown-key-hint",
        cand("timout_ms: 5"),
        ["candidates[0].timout_ms: unknown key (did you mean 'timeout_ms'?)"],
    ),
    ("unknown-key-no-hint", f"{PROD}\ncolour: blue\n", ["colour: unknown key"]),
    (
        "unknown-key-case",
        f"{PROD}\nListen: {{port: 1}}\n",
        ["Listen: unknown key (did you mean 'listen'?)"],
    ),
    ("loader-only-key", f"{PROD}\nsource: other.yaml\n", ["source: unknown key"]),
    (
        "non-string-key",
        f"{PROD}\nlisten: {{1: 2}}\n",
        ["listen: keys must be strings, got int (1)"],
    ),
    (
        "non-string-key-top-level",
        f"{PROD}\n1: 2\n",
        ["<top level>: keys must be strings, got int (1)"],
    ),
    (
        "non-string-key-in-list",
        f"{PROD}\npromotion: {{gates: [{{metric: score_psi, max: 1, true: 2}}]}}\n",
        ["promotion.gates[0]: keys must be strings, got bool (True)"],
    ),
    # ---- types
    (
        "int-given-str",
        f"{PROD}\nlisten: {{port: abc}}\n",
        ["listen.port: expected an integer, got str ('abc')"],
    ),
    (
        "int-given-bool",
        f"{PROD}\nlisten: {{port: yes}}\n",
        ["listen.port: expected an integer, got bool (True)"],
    ),
    (
        "int-given-float",
        f"{PROD}\nlisten: {{port: 8080.0}}\n",
        ["listen.port: expected an integer, got float (8080.0)"],
    ),
    (
        "float-given-bool",
        cand("sample_rate: false"),
        ["candidates[0].sample_rate: expected a number, got bool (False)"],
    ),
    (
        "float-not-finite",
        'production: {name: churn, url: "http://prod.svc:8080", timeout_ms: .inf}',
        ["production.timeout_ms: must be a finite number"],
    ),
    (
        "str-given-float",
        'production: {name: churn, version: 1.10, url: "http://prod.svc:8080"}',
        ["production.version: expected a string, got float (1.1); put it in quotes"],
    ),
    (
        "bool-given-str",
        local_cand(f"{{path: m.onnx, sha256: {HEX}, allow_unpinned: maybe}}"),
        ["candidates[0].model.allow_unpinned: expected true or false, got str ('maybe')"],
    ),
    (
        "list-given-mapping",
        f"{PROD}\ncandidates: {{name: x}}\n",
        ["candidates: expected a list, got mapping"],
    ),
    ("mapping-given-list", f"{PROD}\nlimits: [1, 2]\n", ["limits: expected a mapping, got list"]),
    ("mapping-given-null", f"{PROD}\nlisten:\n", ["listen: expected a mapping, got null"]),
    (
        "list-item-type",
        f"{PROD}\ncompare: {{features: [age, 3]}}\n",
        ["compare.features[1]: expected a string, got int (3); put it in quotes"],
    ),
    (
        "path-given-number",
        f"{PROD}\ncompare: {{reference: 7}}\n",
        ["compare.reference: expected a file path, got int (7)"],
    ),
    (
        "features-repeated",
        f"{PROD}\ncompare: {{features: [age, tenure, age, tenure]}}\n",
        [
            "compare.features[2]: 'age' is listed twice (also compare.features[0])",
            "compare.features[3]: 'tenure' is listed twice (also compare.features[1])",
        ],
    ),
    (
        "features-empty",
        f'{PROD}\ncompare: {{features: ["", balance]}}\n',
        ["compare.features[0]: must be a non-empty column name"],
    ),
    (
        "pair-log-path-is-a-directory",
        f"{PROD}\npair_log: {{path: .}}\n",
        ["pair_log.path: is a directory, not a file (name a file in it, like pairs.jsonl)"],
    ),
    (
        "snapshot-path-is-a-directory",
        f"{PROD}\ncompare: {{snapshot: {{path: .}}}}\n",
        [
            "compare.snapshot.path: is a directory, not a file (name a file in it, like "
            "snapshot.json)"
        ],
    ),
    (
        "path-empty",
        f"{PROD}\npair_log: {{path: ''}}\n",
        ["pair_log.path: must be a non-empty file path"],
    ),
    # ---- ranges from field metadata
    (
        "range-gt",
        f"{PROD}\ncandidates:\n"
        '  - {name: a, url: "http://a.svc"}\n'
        '  - {name: b, url: "http://b.svc", timeout_ms: 0}\n',
        ["candidates[1].timeout_ms: must be > 0"],
    ),
    (
        "range-ge",
        f"{PROD}\nlimits: {{mirror_max_body_bytes: -1}}\n",
        ["limits.mirror_max_body_bytes: must be >= 0"],
    ),
    ("range-lt", f"{PROD}\npromotion: {{confidence: 1}}\n", ["promotion.confidence: must be < 1"]),
    ("range-le", cand("sample_rate: 1.5"), ["candidates[0].sample_rate: must be <= 1"]),
    ("range-le-port", f"{PROD}\nadmin: {{port: 70000}}\n", ["admin.port: must be <= 65535"]),
    # Bounds of what reaches numpy, the reservoir's 8-byte key and other fixed-size C ints.
    (
        "seed-too-large",
        f"{PROD}\ncompare: {{seed: {2**64}}}\n",
        [f"compare.seed: must be < {2**64}"],
    ),
    ("seed-negative", f"{PROD}\ncompare: {{seed: -1}}\n", ["compare.seed: must be >= 0"]),
    (
        "memory-mb-too-large",
        local_cand(PINNED, f"executor: {{memory_mb: {2**50}}}"),
        [f"candidates[0].executor.memory_mb: must be <= {16 * 1024 * 1024}"],
    ),
    (
        "shadow-response-cap-too-large",
        f"{PROD}\nlimits: {{shadow_max_response_bytes: {2**63}}}\n",
        [f"limits.shadow_max_response_bytes: must be <= {2**40}"],
    ),
    (
        "cpu-number-too-large",
        local_cand(PINNED, f"executor: {{cpus: [0, {2**40}]}}"),
        [f"candidates[0].executor.cpus[1]: must be <= 65535, got {2**40}"],
    ),
    # Durations past a day and counts past a million are typos, named before they bite.
    (
        "timeout-ms-past-a-day",
        cand("timeout_ms: 86400001.0"),
        ["candidates[0].timeout_ms: must be <= 86400000.0"],
    ),
    (
        "grace-past-a-day",
        f"{PROD}\nshutdown: {{grace_s: 100000.0}}\n",
        ["shutdown.grace_s: must be <= 86400.0"],
    ),
    (
        "warmup-runs-past-a-million",
        local_cand(PINNED, "executor: {warmup_runs: 1000001}"),
        ["candidates[0].executor.warmup_runs: must be <= 1000000"],
    ),
    (
        "pair-log-backups-past-a-million",
        f"{PROD}\npair_log: {{backups: 10000000}}\n",
        ["pair_log.backups: must be <= 1000000"],
    ),
    # ---- Literal
    (
        "literal",
        f"{PROD}\nprotocol: v3\n",
        ["protocol: must be one of 'v1', 'v2', 'json', got 'v3'"],
    ),
    (
        "literal-nested",
        local_cand(PINNED, "executor: {kind: fork}"),
        ["candidates[0].executor.kind: must be one of 'process', 'thread', got 'fork'"],
    ),
    # ---- required
    ("required-section", f"{CAND}\n", ["production: required"]),
    ("required-field", 'production: {url: "http://prod.svc"}', ["production.name: required"]),
    (
        "required-in-list",
        f"{PROD}\npromotion: {{gates: [{{min: 0.9}}]}}\n",
        ["promotion.gates[0].metric: required"],
    ),
    (
        "required-baseline-url",
        f"{PROD}\nbaseline: {{sample_rate: 0.1}}\n",
        ["baseline.url: required"],
    ),
    # ---- exactly one of url / model
    (
        "production-url-and-model",
        "production:\n  name: churn\n  url: http://prod.svc\n"
        f"  model: {{path: m.onnx, sha256: {HEX}}}\n",
        ["production: set exactly one of 'url' or 'model'"],
    ),
    (
        "candidate-neither",
        f"{PROD}\ncandidates: [{{name: churn-rc}}]\n",
        ["candidates[0]: set exactly one of 'url' or 'model'"],
    ),
    # ---- executor: only a local model has one
    (
        "candidate-executor-with-url",
        cand("executor: {workers: 2}"),
        ["candidates[0].executor: only for a local model (model:), not with url:"],
    ),
    (
        "production-executor-with-url",
        'production: {name: churn, url: "http://prod.svc:8080", executor: {kind: thread}}',
        ["production.executor: only for a local model (model:), not with url:"],
    ),
    (
        "executor-with-url-and-model",
        "production:\n  name: churn\n  url: http://prod.svc\n"
        f"  model: {PINNED}\n  executor: {{kind: thread}}\n",
        ["production: set exactly one of 'url' or 'model'"],
    ),
    # ---- URLs
    (
        "url-https",
        'production: {name: churn, url: "https://prod.svc"}',
        [
            "production.url: https is not supported by the fast path; use http:// "
            "(terminate TLS in a sidecar or the service mesh)"
        ],
    ),
    (
        "url-not-absolute",
        'production: {name: churn, url: "prod.svc:8080"}',
        ["production.url: must be an absolute http:// URL (like http://host:8080)"],
    ),
    (
        "url-no-host",
        'production: {name: churn, url: "http://:8080"}',
        ["production.url: must name a host (like http://host:8080)"],
    ),
    (
        "url-bad-port",
        cand("metrics_url: 'http://cand.svc:99999/metrics'"),
        ["candidates[0].metrics_url: is not a valid URL (check the host and port)"],
    ),
    (
        "url-query",
        f'{PROD}\ncandidates: [{{name: c, url: "http://cand.svc/v2?debug=1"}}]\n',
        [
            "candidates[0].url: must not have a query string "
            "(give a base URL; request paths are appended)"
        ],
    ),
    (
        "url-fragment",
        f'{PROD}\nbaseline: {{url: "http://b.svc/#x"}}\n',
        ["baseline.url: must not have a fragment"],
    ),
    (
        "url-space",
        f'{PROD}\nbaseline: {{url: "http://b.svc/a b"}}\n',
        ["baseline.url: must not contain spaces or control characters"],
    ),
    (
        "candidate-equals-production",
        f'{PROD}\ncandidates: [{{name: c, url: "HTTP://Prod.SVC:8080/"}}]\n',
        ["candidates[0].url: equals production.url; a candidate must be a different service"],
    ),
    (
        "candidate-equals-production-default-port",
        'production: {name: churn, url: "http://prod.svc/v2/"}\n'
        'candidates: [{name: c, url: "http://user:pw@PROD.svc:80/v2"}]\n',
        ["candidates[0].url: equals production.url; a candidate must be a different service"],
    ),
    (
        "baseline-equals-production",
        f'{PROD}\nbaseline: {{url: "http://prod.svc:8080"}}\n',
        ["baseline.url: equals production.url; the baseline must be another instance"],
    ),
    (
        "loop-to-own-listener",
        "listen: {host: 127.0.0.1, port: 8080}\n"
        'production: {name: churn, url: "http://localhost:8080"}\n',
        [
            "production.url: points at shadowproxy's own listener (127.0.0.1:8080); "
            "requests would loop"
        ],
    ),
    # ---- names
    (
        "duplicate-candidate-name",
        f"{PROD}\ncandidates:\n"
        '  - {name: churn-rc, url: "http://a.svc"}\n'
        '  - {name: other, url: "http://b.svc"}\n'
        '  - {name: churn-rc, url: "http://c.svc"}\n',
        ["candidates[2].name: duplicate candidate name 'churn-rc' (also candidates[0])"],
    ),
    (
        "baseline-name-clash",
        f'{CAND}\n{PROD}\nbaseline: {{name: churn-rc, url: "http://b.svc"}}\n',
        ["baseline.name: duplicate baseline name 'churn-rc' (also candidates[0])"],
    ),
    (
        "bad-label-name",
        f'{PROD}\ncandidates: [{{name: "churn rc", url: "http://a.svc"}}]\n',
        [
            "candidates[0].name: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ "
            "(it is used as a metrics label), got 'churn rc'"
        ],
    ),
    # ---- model files
    (
        "sha256-malformed",
        local_cand("{path: m.onnx, sha256: abc}"),
        ["candidates[0].model.sha256: must be 64 hex characters (the file's SHA-256 digest)"],
    ),
    (
        "sha256-missing",
        local_cand("{path: m.onnx}"),
        ["candidates[0].model.sha256: required (or set allow_unpinned: true)"],
    ),
    (
        "model-path-missing",
        local_cand(f"{{sha256: {HEX}}}"),
        ["candidates[0].model.path: required"],
    ),
    # ---- promotion gates
    (
        "gate-min-and-max",
        f"{PROD}\npromotion: {{gates: [{{metric: score_psi, min: 0, max: 0.1}}]}}\n",
        ["promotion.gates[0]: set exactly one of 'min' or 'max'"],
    ),
    (
        "gate-neither",
        f"{PROD}\npromotion: {{gates: [{{metric: score_psi}}]}}\n",
        ["promotion.gates[0]: set exactly one of 'min' or 'max'"],
    ),
    (
        "gate-metric-hint",
        f"{PROD}\npromotion: {{gates: [{{metric: label_agrement, min: 0.98}}]}}\n",
        [
            "promotion.gates[0].metric: unknown gate metric 'label_agrement' "
            "(did you mean 'label_agreement'?)"
        ],
    ),
    (
        "gate-metric-no-hint",
        f"{PROD}\npromotion: {{gates: [{{metric: banana, min: 1}}]}}\n",
        ["promotion.gates[0].metric: unknown gate metric 'banana'"],
    ),
    # ---- listeners and limits
    (
        "listen-admin-clash",
        f"{PROD}\nlisten: {{port: 9000}}\nadmin: {{port: 9000}}\n",
        ["admin.port: clashes with listen (0.0.0.0:9000); use another port"],
    ),
    (
        "listen-admin-clash-wildcard",
        f"{PROD}\nlisten: {{host: 0.0.0.0, port: 9000}}\nadmin: {{host: 127.0.0.1, port: 9000}}\n",
        ["admin.port: clashes with listen (0.0.0.0:9000); use another port"],
    ),
    (
        "host-is-url",
        f'{PROD}\nlisten: {{host: "http://0.0.0.0"}}\n',
        ["listen.host: must be a host name or IP address, not a URL"],
    ),
    (
        "mirror-above-max-body",
        f"{PROD}\nlimits: {{max_body_bytes: 1000, mirror_max_body_bytes: 2000}}\n",
        ["limits.mirror_max_body_bytes: must be <= limits.max_body_bytes (1000)"],
    ),
    (
        "health-path",
        'production: {name: churn, url: "http://prod.svc", health_path: healthz}',
        ["production.health_path: must start with '/', got 'healthz'"],
    ),
    # ---- headers and methods
    (
        "header-bad-name",
        cand('headers: {"X Bad": v}'),
        ["candidates[0].headers: 'X Bad' is not a valid HTTP header name"],
    ),
    (
        "header-crlf-value",
        cand('headers: {X-Token: "abc\\r\\nX-Evil: 1"}'),
        [
            "candidates[0].headers.X-Token: value must be Latin-1 text without control "
            "characters (CR, LF, NUL, ...)"
        ],
    ),
    (
        "header-value-not-string",
        cand("headers: {X-Retries: 3}"),
        ["candidates[0].headers.X-Retries: expected a string value, got int"],
    ),
    (
        "header-managed",
        cand("headers: {Content-Length: '5'}"),
        ["candidates[0].headers.Content-Length: is managed by the proxy and cannot be set"],
    ),
    (
        "header-duplicate",
        cand("headers: {X-A: '1', x-a: '2'}"),
        ["candidates[0].headers.x-a: duplicate header (also 'X-A')"],
    ),
    (
        "headers-given-list",
        cand("headers: [Authorization]"),
        ["candidates[0].headers: expected a mapping of header names to values, got list"],
    ),
    (
        "method-invalid",
        cand('methods: [post, "GE T"]'),
        ["candidates[0].methods[1]: 'GE T' is not a valid HTTP method"],
    ),
    (
        "drop-header-invalid",
        cand('drop_headers: [cookie, "a b"]'),
        ["candidates[0].drop_headers[1]: 'a b' is not a valid HTTP header name"],
    ),
    (
        "cpus-negative-and-twice",
        local_cand(PINNED, "executor: {cpus: [1, -1, 1]}"),
        [
            "candidates[0].executor.cpus[1]: must be >= 0, got -1",
            "candidates[0].executor.cpus[2]: CPU 1 is listed twice",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=row_id) for row_id, text, expected in BAD_CONFIGS],
)
def test_bad_config_gives_exact_lines(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problem_lines(tmp_path, text) == expected


def test_table_rows_are_distinct() -> None:
    ids = [row_id for row_id, _text, _expected in BAD_CONFIGS]
    assert len(ids) == len(set(ids)) >= 20


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    lines = problem_lines(
        tmp_path,
        """
        production: {name: churn, url: "http://prod.svc"}
        listen: {port: abc}
        candidates:
          - {name: a, url: "http://a.svc", timout_ms: 5}
          - {name: b, url: "http://b.svc", timeout_ms: -1}
        """,
    )
    assert lines == [
        "listen.port: expected an integer, got str ('abc')",
        "candidates[0].timout_ms: unknown key (did you mean 'timeout_ms'?)",
        "candidates[1].timeout_ms: must be > 0",
    ]


def test_cross_field_rules_still_run_beside_field_problems(tmp_path: Path) -> None:
    # candidates[1] has a bad timeout, yet its name still counts for the duplicate rule.
    lines = problem_lines(
        tmp_path,
        f"""
        {PROD}
        candidates:
          - {{name: dup, url: "http://a.svc"}}
          - {{name: dup, url: "http://b.svc", timeout_ms: 0}}
        """,
    )
    assert lines == [
        "candidates[1].timeout_ms: must be > 0",
        "candidates[1].name: duplicate candidate name 'dup' (also candidates[0])",
    ]


def test_a_failed_field_gives_no_derived_complaint(tmp_path: Path) -> None:
    # A mistyped url is one problem, not also "set exactly one of 'url' or 'model'".
    lines = problem_lines(tmp_path, "production: {name: churn, url: 42}")
    assert lines == ["production.url: expected a string, got int (42); put it in quotes"]


# --------------------------------------------------------------------------- the file


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    file = write(tmp_path, "- production\n- candidates\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert (
        str(info.value) == f"{file.absolute()}: the top level must be a mapping of keys, got list"
    )


def test_empty_file(tmp_path: Path) -> None:
    file = write(tmp_path, "# nothing yet\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert (
        str(info.value) == f"{file.absolute()}: the config is empty; it needs at least 'production'"
    )


def test_missing_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: no such file"


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file"


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    file = write(tmp_path, "production:\n  name: [churn\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{file}: not valid YAML (line 3, column 1): ")


def test_non_utf8_file(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes(b"production: {name: caf\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: is not UTF-8 text (bad byte at offset 22)"


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path, PROD + "\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(file)


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    file = write(
        tmp_path,
        f"""
        production: !!python/object/apply:os.system ["touch {marker}"]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(file)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{file}: not valid YAML (line 2, column 13): ")
    assert "could not determine a constructor" in line
    assert not marker.exists()


def test_repeated_keys_are_reported(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        """\
        production:
          name: churn
          url: "http://prod.svc"
          timeout_ms: 100
          timeout_ms: 0
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(file)
    # The repeat is named, and the value that YAML keeps is still checked.
    assert str(info.value).splitlines() == [
        f"{file}: line 5: key 'timeout_ms' is given twice (YAML would keep the last)",
        "production.timeout_ms: must be > 0",
    ]


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"""
        {PROD}
        candidates:
          - &first {{name: a, url: "http://a.svc", timeout_ms: 50, sample_rate: 0.5}}
          - <<: *first
            name: b
            url: "http://b.svc"
        """,
    )
    assert [c.name for c in cfg.candidates] == ["a", "b"]
    assert cfg.candidates[1].timeout_ms == 50.0


def _alias_levels(levels: int, first: str, step: str) -> str:
    """YAML where each level refers to the one before nine times: tiny as text, but a walk
    that follows every alias meets 9**levels copies of the first level."""
    lines = [f"l0: &l0 {first}"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} " + step.format(", ".join([f"*l{i - 1}"] * 9)))
    return "\n".join(lines) + "\n"


def test_shared_alias_nodes_are_walked_once(tmp_path: Path) -> None:
    # 9**29 references to l0: only a walk that visits each node once ever ends.
    file = write(tmp_path, _alias_levels(30, "{x: 1, x: 2}", "[{}]") + PROD + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    lines = str(info.value).splitlines()
    # The repeat inside the shared mapping is one problem, not one per alias.
    assert lines[0] == f"{file}: line 1: key 'x' is given twice (YAML would keep the last)"
    assert lines[1:] == [f"l{i}: unknown key" for i in range(30)]


def test_aliases_under_a_known_key_are_not_expanded(tmp_path: Path) -> None:
    text = _alias_levels(30, "[a, b]", "[{}]") + f"{PROD}\ncompare: {{features: *l29}}\n"
    lines = problem_lines(tmp_path, text)
    assert lines == [f"l{i}: unknown key" for i in range(30)] + [
        f"compare.features[{i}]: expected a string, got list" for i in range(9)
    ]


def test_merge_keys_that_multiply_are_refused(tmp_path: Path) -> None:
    # YAML copies what a merge key (<<) brings in: 30 levels would be 9**29 copies of l0.
    file = write(tmp_path, _alias_levels(30, "{a: 1, b: 2}", "{{<<: [{}]}}") + PROD + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    (line,) = str(info.value).splitlines()
    assert (
        line == f"{file}: line 7: merge keys (<<) expand the config to more than 1,000,000 entries"
    )


def test_a_few_merges_are_still_fine(tmp_path: Path) -> None:
    # The same shape, small enough to be an honest config.
    text = _alias_levels(4, "{a: 1, b: 2}", "{{<<: [{}]}}")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text + PROD + "\n")
    assert str(info.value).splitlines() == [f"l{i}: unknown key" for i in range(4)]


def test_recursive_aliases_are_a_config_error(tmp_path: Path) -> None:
    lines = problem_lines(tmp_path, f"{PROD}\ncompare: &c {{features: [a], outputs: *c}}\n")
    assert lines == [
        "compare.outputs.features: unknown key",
        "compare.outputs.outputs: unknown key",
    ]


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    file = write(tmp_path, f"{PROD}\ncompare: {{features: {'[' * 5000}{']' * 5000}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: not valid YAML: nested too deeply"


def test_largest_seed_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"{PROD}\ncompare: {{seed: {2**64 - 1}}}\n")
    assert cfg.compare.seed == 2**64 - 1


def test_executor_of_a_local_model_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, local_cand(PINNED, "executor: {kind: thread, workers: 2}"))
    assert (cfg.candidates[0].executor.kind, cfg.candidates[0].executor.workers) == ("thread", 2)
    # A remote model that leaves executor out keeps the (unused) default.
    defaults = {spec.name: spec.default for spec in dataclasses.fields(config_model.Production)}
    assert cfg.production.executor == defaults["executor"]


def test_pair_log_path_may_be_a_new_file_in_a_new_folder(tmp_path: Path) -> None:
    # The log creates its folders when it starts; only a directory in the way is wrong.
    cfg = load(tmp_path, f"{PROD}\npair_log: {{path: logs/new/pairs.jsonl}}\n")
    assert cfg.pair_log.path == tmp_path / "logs" / "new" / "pairs.jsonl"


# --------------------------------------------------------------------------- conversions


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "shadowproxy"
    folder.mkdir(parents=True)
    file = write(
        folder,
        f"""
        {PROD}
        candidates: [{{name: rc, model: {{path: models/rc.onnx, sha256: {HEX}}}}}]
        compare: {{reference: ../reference.json, snapshot: {{path: /var/lib/snap.json}}}}
        pair_log: {{path: pairs.jsonl}}
        """,
    )
    cfg = load_config(file)
    model = cfg.candidates[0].model
    assert model is not None
    assert model.path == folder / "models" / "rc.onnx"
    assert cfg.compare.reference == folder / ".." / "reference.json"
    assert cfg.compare.snapshot.path == Path("/var/lib/snap.json")
    assert cfg.pair_log.path == folder / "pairs.jsonl"
    assert cfg.source == file


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, f"{PROD}\npair_log: {{path: pairs.jsonl}}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("shadowproxy.yaml")
    assert cfg.pair_log.path == tmp_path / "pairs.jsonl"
    assert cfg.source is not None and cfg.source.is_absolute()


def test_without_base_dir_paths_stay_as_written() -> None:
    data = yaml.safe_load(f"{PROD}\npair_log: {{path: pairs.jsonl}}\n")
    cfg = config_from_dict(data)
    assert cfg.pair_log.path == Path("pairs.jsonl")
    assert cfg.source is None


def test_values_are_normalised(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"""
        production: {{name: churn, url: "http://prod.svc", headers: {{X-Caller: sp}}}}
        candidates:
          - name: rc
            model: {{path: m.onnx, sha256: "{HEX.upper()}"}}
            methods: [post, Put]
            timeout_ms: 50
            headers: {{Authorization: "Bearer t", X-Tenant: a}}
        baseline: null
        """,
    )
    candidate = cfg.candidates[0]
    assert candidate.methods == ("POST", "PUT")
    assert candidate.model is not None and candidate.model.sha256 == HEX
    assert candidate.headers == (("Authorization", "Bearer t"), ("X-Tenant", "a"))
    assert cfg.production.headers == (("X-Caller", "sp"),)
    assert candidate.timeout_ms == 50.0 and isinstance(candidate.timeout_ms, float)
    assert isinstance(cfg.candidates, tuple)
    assert cfg.baseline is None


def test_defaults_fill_what_is_left_out(tmp_path: Path) -> None:
    cfg = load(tmp_path, PROD)
    assert cfg == Config(
        production=config_model.Production(name="churn", url="http://prod.svc:8080"),
        source=tmp_path / "shadowproxy.yaml",
    )


def test_unpinned_model_may_be_allowed(tmp_path: Path) -> None:
    cfg = load(tmp_path, local_cand("{path: m.onnx, allow_unpinned: true}"))
    model = cfg.candidates[0].model
    assert model is not None and model.sha256 is None and model.allow_unpinned


def test_every_contract_gate_metric_is_accepted(tmp_path: Path) -> None:
    gates = ", ".join(f"{{metric: {name}, min: 0}}" for name in GATE_METRICS)
    cfg = load(tmp_path, f"{PROD}\npromotion: {{gates: [{gates}]}}\n")
    assert tuple(gate.metric for gate in cfg.promotion.gates) == GATE_METRICS
    assert len(GATE_METRICS) == 27  # the contract's 26, and score_nonfinite_rate


def test_port_zero_never_clashes(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"{PROD}\nlisten: {{port: 0}}\nadmin: {{port: 0}}\n")
    assert cfg.listen.port == cfg.admin.port == 0


def test_the_result_is_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"{PROD}\n{CAND}\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.candidates[0].sample_rate = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.candidates[0] = cfg.candidates[0]  # type: ignore[index]


def test_non_mapping_data_is_a_config_error() -> None:
    not_mappings: tuple[Any, ...] = ([], "production", 3, 1.5, True)
    for data in not_mappings:
        with pytest.raises(ConfigError, match="the top level must be a mapping of keys"):
            config_from_dict(data)


# --------------------------------------------------------------------------- redaction

SECRET_CONFIG = """
production:
  name: churn
  url: "http://svc-user:prod-password-1@prod.svc:8080"
  headers: {Authorization: "Bearer prod-token-2"}
candidates:
  - name: rc
    url: "http://cand-token-3@cand.svc"
    headers: {X-Api-Key: cand-key-4}
baseline:
  url: "http://b.svc"
  headers: {Cookie: "session=baseline-cookie-5"}
pair_log: {path: pairs.jsonl, redact: [Authorization]}
"""
SECRETS = ("prod-password-1", "prod-token-2", "cand-token-3", "cand-key-4", "baseline-cookie-5")


def test_redacted_config_hides_every_secret(tmp_path: Path) -> None:
    cfg = load(tmp_path, SECRET_CONFIG)
    text = json.dumps(redacted_config(cfg))
    for secret in SECRETS:
        assert secret not in text


def test_redacted_config_shape(tmp_path: Path) -> None:
    plain = redacted_config(load(tmp_path, SECRET_CONFIG))
    assert plain["production"]["url"] == "http://svc-user:[redacted]@prod.svc:8080"
    assert plain["production"]["headers"] == {"Authorization": "[redacted]"}
    assert plain["candidates"][0]["url"] == "http://[redacted]@cand.svc"
    assert plain["candidates"][0]["headers"] == {"X-Api-Key": "[redacted]"}
    assert plain["candidates"][0]["methods"] == ["POST"]
    assert plain["baseline"]["headers"] == {"Cookie": "[redacted]"}
    assert plain["pair_log"]["path"] == str(tmp_path / "pairs.jsonl")
    assert plain["pair_log"]["redact"] == ["Authorization"]
    assert plain["source"] == str(tmp_path / "shadowproxy.yaml")
    assert json.loads(json.dumps(plain)) == plain


def test_problem_messages_never_echo_secrets(tmp_path: Path) -> None:
    lines = problem_lines(
        tmp_path,
        """
        production:
          name: churn
          url: "https://svc-user:prod-password-1@prod.svc?x=1"
          headers: {Authorization: "Bearer prod-token-2\\n", X-Num: 987654321}
        """,
    )
    assert len(lines) == 3
    for line in lines:
        assert "prod-password-1" not in line and "prod-token-2" not in line
        assert "987654321" not in line


# --------------------------------------------------------------------------- properties


def _reachable_dataclasses(hint: Any, seen: set[type]) -> set[type]:
    """Every config dataclass reachable from ``hint`` through field types."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if hint not in seen:
            seen.add(hint)
            for field_hint in typing.get_type_hints(hint).values():
                _reachable_dataclasses(field_hint, seen)
    for arg in typing.get_args(hint):
        _reachable_dataclasses(arg, seen)
    return seen


ALL_KEYS = sorted(
    {spec.name for cls in _reachable_dataclasses(Config, set()) for spec in dataclasses.fields(cls)}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["http://h.svc", "https://h", "v2", "POST", HEX, "/", "0.0.0.0", "a.onnx"])
)
keys = st.sampled_from(ALL_KEYS) | st.text(max_size=8) | st.integers(-3, 3)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
)
mappings = st.dictionaries(keys, values, max_size=10)


def _only_config_errors(data: Any) -> None:
    try:
        cfg = config_from_dict(data, base_dir="/srv/cfg")
    except ConfigError as exc:
        assert exc.problems
        assert all(str(problem) for problem in exc.problems)
    else:
        assert isinstance(cfg, Config)
        json.dumps(redacted_config(cfg))


@settings(max_examples=300, deadline=None)
@given(mappings)
def test_random_mappings_only_ever_raise_config_error(data: dict[Any, Any]) -> None:
    _only_config_errors(data)


@settings(max_examples=300, deadline=None)
@given(
    production_extra=st.dictionaries(keys, values, max_size=4),
    candidate_extra=st.dictionaries(keys, values, max_size=4),
    top_extra=st.dictionaries(keys, values, max_size=4),
)
def test_valid_config_with_random_extra_keys_only_raises_config_error(
    production_extra: dict[Any, Any], candidate_extra: dict[Any, Any], top_extra: dict[Any, Any]
) -> None:
    data: dict[Any, Any] = {
        "production": {"name": "churn", "url": "http://prod.svc", **production_extra},
        "candidates": [{"name": "rc", "url": "http://rc.svc", **candidate_extra}],
        **top_extra,
    }
    _only_config_errors(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    listen_port=st.integers(0, 65535),
    admin_port=st.integers(0, 65535),
    rate=st.floats(0, 1),
    rates=st.lists(st.floats(0, 1), min_size=1, max_size=3),
)
def test_valid_ports_and_sample_rates_round_trip(
    listen_port: int, admin_port: int, rate: float, rates: list[float]
) -> None:
    assume(listen_port != admin_port or listen_port == 0)
    data: dict[str, Any] = {
        "listen": {"port": listen_port},
        "admin": {"port": admin_port},
        "production": {"name": "churn", "url": "http://prod.svc"},
        "candidates": [
            {"name": f"c{i}", "url": f"http://c{i}.svc", "sample_rate": r}
            for i, r in enumerate(rates)
        ],
        "baseline": {"url": "http://b.svc", "sample_rate": rate},
        "pair_log": {"sample_rate": rate},
    }
    cfg = config_from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert (cfg.listen.port, cfg.admin.port) == (listen_port, admin_port)
    assert [c.sample_rate for c in cfg.candidates] == rates
    assert cfg.baseline is not None and cfg.baseline.sample_rate == rate
    assert cfg.pair_log.sample_rate == rate


def test_a_section_given_in_part_keeps_the_defaults_of_its_place() -> None:
    """``production.executor`` has defaults of its own (a thread, no batching wait, the
    proxy's priority); a mapping that sets one key must not bring a candidate's."""
    model = {"path": "/models/m.onnx", "allow_unpinned": True}
    config = config_from_dict({
        "production": {"name": "p", "model": model, "executor": {"workers": 2}},
        "candidates": [{"name": "c", "model": model, "executor": {"workers": 2}}],
    })  # fmt: skip
    production, candidate = config.production.executor, config.candidates[0].executor
    place = {f.name: f for f in dataclasses.fields(config_model.Production)}["executor"].default
    assert production == dataclasses.replace(place, workers=2)
    assert (production.kind, production.max_wait_ms) == ("thread", 0.0)
    assert (production.nice, production.idle_priority) == (0, False)
    assert candidate == dataclasses.replace(config_model.Executor(), workers=2)
    assert (candidate.kind, candidate.idle_priority) == ("process", True)
    # Given whole, a section is what it says.
    given = config_from_dict({
        "production": {"name": "p", "model": model,
                       "executor": {"kind": "process", "nice": 5, "idle_priority": True}},
    }).production.executor  # fmt: skip
    assert (given.kind, given.nice, given.idle_priority, given.max_wait_ms) == (
        "process", 5, True, 0.0,
    )  # fmt: skip
