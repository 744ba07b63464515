"""Where ``shadowproxy report`` reads comparator state from.

- ``PATH``: a snapshot file;
- ``http(s)://HOST:PORT``: one admin listener's ``/admin/snapshot``, one replica;
- ``dns+http://NAME:PORT``: ``/admin/snapshot`` of every address ``NAME`` resolves to (a
  headless Service: every replica);
- ``prometheus+http(s)://HOST:PORT[?match=...]``: the state every replica exports, summed
  by Prometheus.

Snapshot, admin and DNS sources are merged exactly, as many as given. With the DNS form
every replica must answer: one that does not fails the report, since the merge of the
others is not the answer for all traffic. A Prometheus source stands alone: it already sums
every replica it scrapes, so adding snapshots or a second server would count them twice;
and it holds the exported part of the state only (:mod:`shadowproxy.compare.binned`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shadowproxy.compare.binned import figures
from shadowproxy.compare.comparator import Comparator, merge_snapshots
from shadowproxy.compare.discovery import is_dns_source, parse_dns_source, resolve
from shadowproxy.compare.exported import export_fingerprint
from shadowproxy.compare.httpjson import fetch_json
from shadowproxy.compare.persist import read_snapshot_file
from shadowproxy.compare.prometheus import is_prometheus_source, read_prometheus
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.target import TargetState
from shadowproxy.config.model import Config
from shadowproxy.config.urls import split_url
from shadowproxy.errors import StateError

SNAPSHOT_PATH = "/admin/snapshot"
PARALLEL_READS = 8  # replicas read at once from a DNS source

Kind = Literal["snapshot", "prometheus"]


@dataclass(frozen=True)
class SourceState:
    """The merged comparator state of the report's sources, and where it came from."""

    kind: Kind
    targets: dict[str, TargetState]
    sources: tuple[str, ...]
    origins: tuple[str, ...]  # every state merged: files, admin URLs, Prometheus instances
    evaluated_at: float | None = None
    query: str | None = None

    def describe(self) -> dict[str, Any]:
        """The report's ``source`` section."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "sources": list(self.sources),
            "replicas": len(self.origins),
            "origins": list(self.origins),
        }
        if self.kind == "prometheus":
            out |= {"evaluated_at": self.evaluated_at, "query": self.query, "figures": figures()}
        return out


def read_sources(
    sources: Sequence[str],
    config: Config,
    reference: Reference | None,
    timeout_s: float = 10.0,
    *,
    reservoir_key: bytes | None = None,
) -> SourceState:
    """Read and merge every source; StateError naming the source that cannot be used.

    ``reservoir_key`` (from the config's sampling key) checks the snapshots' reservoirs;
    without it keyed reservoirs are taken as stored (see :func:`merge_snapshots`)."""
    if not sources:
        raise StateError("no source given")
    prometheus = [s for s in sources if is_prometheus_source(s)]
    if prometheus and len(sources) > 1:
        others = ", ".join(s for s in sources if s != prometheus[0])
        raise StateError(
            f"{prometheus[0]}: a Prometheus source cannot be combined with other sources "
            f"({others}): it already sums every replica it scrapes, so they would count twice"
        )
    if prometheus:
        comparator = Comparator(config, reference)
        state = read_prometheus(
            prometheus[0],
            export_fingerprint(comparator.fingerprint()),
            comparator.seed,
            comparator.layouts,
            comparator.category_layouts,
            timeout_s,
        )
        return SourceState(
            "prometheus", state.targets, (prometheus[0],), state.replicas,
            state.evaluated_at, state.query,
        )  # fmt: skip
    check_distinct_sources(sources)
    documents = [doc for source in sources for doc in read_snapshots(source, timeout_s)]
    # Checked against what the config would measure now, not only against each other: a
    # report evaluated under this config must not read state counted under another.
    comparator = Comparator(config, reference)
    merged = merge_snapshots(
        documents,
        reservoir_key,
        layout=comparator.fingerprint(),
        production=comparator.production(),
    )
    return SourceState("snapshot", merged, tuple(sources), tuple(o for o, _ in documents))


def check_distinct_sources(sources: Sequence[str]) -> None:
    """StateError when one file or URL is given twice: its state would count twice."""
    seen: dict[str, str] = {}
    for source in sources:
        if "://" in source:
            key = source.rstrip("/").removesuffix(SNAPSHOT_PATH)
        else:
            key = str(Path(source).resolve())
        if key in seen:
            raise StateError(
                f"{source}: given twice (also as {seen[key]}); its state would count twice"
            )
        seen[key] = source


def read_snapshots(source: str, timeout_s: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """``(origin, snapshot document)`` of every state one snapshot-kind source stands for."""
    if is_dns_source(source):
        ds = parse_dns_source(source)
        addresses = resolve(ds)
        urls = ds.replica_urls(addresses)

        def read(url: str) -> tuple[str, dict[str, Any]]:
            where = f"{source} (replica {url}, one of {len(urls)} addresses of {ds.host})"
            return url, read_admin(url, where, timeout_s)

        with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, len(urls))) as pool:
            # map() re-raises the first failure: one silent replica fails the whole source.
            return list(pool.map(read, urls))
    if "://" in source and not source.startswith(("http://", "https://")):
        raise StateError(
            f"{source}: not a source form (a snapshot file, http://HOST:PORT, "
            "dns+http://NAME:PORT or prometheus+http://HOST:PORT)"
        )
    if source.startswith(("http://", "https://")):
        split = split_url(source)
        if isinstance(split, str):
            raise StateError(f"{source}: {split}")
        if not split[0].hostname:
            raise StateError(f"{source}: is not a valid URL: no host")
        return [(source, read_admin(source, source, timeout_s))]
    return [(source, read_snapshot_file(Path(source)))]


def read_admin(url: str, source: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The snapshot an admin listener serves; ``url`` is its base URL (or the full path)."""
    url = url.rstrip("/")
    if not url.endswith(SNAPSHOT_PATH):
        url += SNAPSHOT_PATH
    data = fetch_json(url, source, "the admin listener", timeout_s=timeout_s)
    if not isinstance(data, dict):
        raise StateError(f"{source}: {url} did not answer a snapshot object")
    return data
