"""The comparator state of every replica, summed by a Prometheus server.

A source ``prometheus+http://HOST:PORT[/PREFIX][?match=MATCHERS]`` names the Prometheus
HTTP API; ``match`` holds PromQL label matchers (``job="churn-shadow",namespace="ml"``) that
pick this deployment's replicas when the server scrapes others too. One instant query reads
everything at one evaluation time: each exported family of
:mod:`shadowproxy.compare.exported` aggregated over the replicas (``sum by``, ``min by`` or
``max by`` its own labels), plus each replica's layout series. A single query matters: the
server's isolation shows it every replica's latest scrape whole, so no family can come from
a later scrape than another.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shadowproxy.compare.bins import BinLayout
from shadowproxy.compare.exported import BY_SAMPLE_NAME, FAMILIES, LAYOUT, Sample, rebuild
from shadowproxy.compare.httpjson import fetch_json
from shadowproxy.compare.target import TargetState
from shadowproxy.errors import StateError

PROMETHEUS_SCHEMES = ("prometheus+http", "prometheus+https")
QUERY_PATH = "/api/v1/query"


@dataclass(frozen=True)
class PrometheusSource:
    """A parsed ``prometheus+http(s)://`` source."""

    source: str
    base_url: str  # http(s)://host:port[/prefix]
    match: str  # PromQL label matchers without braces, or ""


@dataclass(frozen=True)
class PrometheusState:
    """What a Prometheus source gives: the merged targets and where they came from."""

    targets: dict[str, TargetState]
    replicas: tuple[str, ...]  # the ``instance`` of every replica summed
    evaluated_at: float  # the query's evaluation time (Unix seconds, the server's clock)
    query: str


def is_prometheus_source(source: str) -> bool:
    return source.startswith(tuple(f"{scheme}://" for scheme in PROMETHEUS_SCHEMES))


def parse_prometheus_source(source: str) -> PrometheusSource:
    """Split a source into the API's base URL and the label matchers (pure)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme not in PROMETHEUS_SCHEMES or not parts.netloc:
        raise StateError(f"{source}: expected prometheus+http://HOST:PORT[?match=MATCHERS]")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"match"})
    if unknown or len(query.get("match", [])) > 1:
        raise StateError(f"{source}: the only query parameter is one 'match', got {parts.query!r}")
    match = query.get("match", [""])[0].strip().strip(",")
    if "{" in match or "}" in match:
        raise StateError(f"{source}: match takes label matchers without braces, got {match!r}")
    scheme = parts.scheme.removeprefix("prometheus+")
    base = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return PrometheusSource(source, base, match)


def state_query(match: str = "") -> str:
    """The PromQL that reads the merged state and every replica's layout series (pure).

    One aggregation per merge rule, joined with ``or on(__name__, ...)``: matching on the
    name keeps families that share their other labels (a plain ``or`` ignores the name).
    """
    extra = f", {match}" if match else ""
    everything = sorted({label for family in FAMILIES for label in family.labels})
    on = f"on({', '.join(['__name__', *everything])})"
    parts = []
    for merge in ("sum", "min", "max"):
        families = [f for f in FAMILIES if f.merge == merge]
        names = "|".join(f.sample_name for f in families)
        labels = sorted({label for f in families for label in f.labels})
        by = ", ".join(["__name__", *labels])
        parts.append(f'{merge} by ({by}) ({{__name__=~"{names}"{extra}}})')
    parts.append(f"{LAYOUT.sample_name}{{{match}}}")
    return f" or {on} ".join(parts)


def read_prometheus(
    source: str,
    expected_fingerprint: str,
    seed: int,
    feature_layouts: Mapping[str, BinLayout],
    category_layouts: Mapping[str, tuple[str, ...]],
    timeout_s: float = 10.0,
) -> PrometheusState:
    """Query the server and rebuild the merged state.

    Raises
    ------
    StateError
        When the server cannot be queried, holds no replica's state (under ``match``), or
        holds state counted over another layout than ``expected_fingerprint`` (another
        seed, reference or feature set, or replicas on different configs).
    """
    ps = parse_prometheus_source(source)
    query = state_query(ps.match)
    url = ps.base_url + QUERY_PATH
    answer = fetch_json(url, source, "Prometheus", form={"query": query}, timeout_s=timeout_s)
    rows = _vector(answer, source)
    layouts = [row for row in rows if row["metric"].get("__name__") == LAYOUT.sample_name]
    if not layouts:
        where = f" matching {ps.match}" if ps.match else ""
        raise StateError(
            f"{source}: Prometheus holds no shadowproxy comparator state{where} "
            f"(no {LAYOUT.sample_name} series); is it scraping the replicas' admin port?"
        )
    found = sorted({str(row["metric"].get("fingerprint")) for row in layouts})
    if found != [expected_fingerprint]:
        raise StateError(
            f"{source}: the replicas' state is counted over layout {', '.join(found)}; this "
            f"config's is {expected_fingerprint} (another seed, reference or features); "
            "refusing to mix them"
        )
    replicas = tuple(sorted(str(row["metric"].get("instance", "?")) for row in layouts))
    twice = sorted({r for r in replicas if replicas.count(r) > 1})
    if twice:
        jobs = sorted({str(row["metric"].get("job", "?")) for row in layouts})
        raise StateError(
            f"{source}: replica {', '.join(twice)} is scraped more than once (jobs "
            f"{', '.join(jobs)}), so the sums would count it twice; pick one with "
            'match=job="..."'
        )
    samples = [
        _sample(row, source) for row in rows if row["metric"].get("__name__") != LAYOUT.sample_name
    ]
    evaluated_at = float(layouts[0]["value"][0])
    targets = rebuild(samples, seed, feature_layouts, category_layouts)
    return PrometheusState(targets, replicas, evaluated_at, query)


def _vector(answer: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(answer, dict) or answer.get("status") != "success":
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise StateError(f"{source}: Prometheus did not answer the query: {error}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise StateError(f"{source}: Prometheus answered a {data.get('resultType')}, not a vector")
    return list(data["result"])


def _sample(row: dict[str, Any], source: str) -> Sample:
    labels = dict(row["metric"])
    name = labels.pop("__name__", "")
    family = BY_SAMPLE_NAME.get(name)
    if family is None:
        raise StateError(f"{source}: Prometheus answered an unexpected series {name!r}")
    try:
        value = float(row["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise StateError(f"{source}: {name}{labels}: no numeric value") from exc
    return Sample(family, labels, value)
