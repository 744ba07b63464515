"""The streaming comparator: pair records in, mergeable per-target state out.

It runs on its own thread, fed by a bounded queue from the pair stream, so the proxy's
event loop only pays a ``put_nowait`` per record (a full queue drops the record and counts
it). The thread takes records in micro-batches and folds each into the state of every
target it mentions; ``snapshot`` serialises that state for ``/admin/snapshot``, the
snapshot file and ``shadowproxy report``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from shadowproxy.compare.inputs import feature_rows
from shadowproxy.compare.pairs import Compared, compare, extract
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.target import Example as TopExample
from shadowproxy.compare.target import TargetState
from shadowproxy.config.model import Config
from shadowproxy.errors import StateError
from shadowproxy.pairing.record import Cost, PairRecord
from shadowproxy.protocols import PayloadProtocol, protocol_for

log = logging.getLogger(__name__)

SCHEMA = "shadowproxy.snapshot/v1"
BATCH = 256
FEEDBACK_WINDOW = 100_000  # request ids remembered for late ground truth
MiB = 1024 * 1024


class Comparator:
    """Per-target comparison state, updated off the event loop."""

    def __init__(
        self,
        config: Config,
        reference: Reference | None = None,
        *,
        queue_size: int = 10_000,
        protocol: PayloadProtocol | None = None,
    ) -> None:
        self.config = config
        self.seed = config.compare.seed
        self.outputs = config.compare.outputs
        self.protocol = protocol or protocol_for(config)
        self.reference = reference
        self.features = config.compare.features
        self.layouts = (
            {f.name: f.layout for f in reference.features if f.layout is not None}
            if reference is not None
            else {}
        )
        self.targets: dict[str, TargetState] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[PairRecord | None] = queue.Queue(queue_size)
        self.dropped = 0
        self.processed = 0
        self.busy_s = 0.0  # thread time spent folding records, for the per-pair cost
        self._labels: collections.OrderedDict[str, dict[str, tuple[Any, Any]]] = (
            collections.OrderedDict()
        )
        self._thread: threading.Thread | None = None

    # -- the event-loop side ---------------------------------------------------------
    def submit(self, record: PairRecord) -> None:
        """Queue a record; never blocks (a full queue drops it, counted)."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="comparator", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Finish what is queued (within ``timeout_s``), then stop the thread."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            batch = [item]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            started = time.thread_time()
            with self.lock:
                for record in records:
                    try:
                        self.update(record)
                    except Exception:  # one odd record must not stop the comparator
                        log.exception("comparator failed on record %s", record.request_id)
                self.busy_s += time.thread_time() - started
            if None in batch:
                return

    # -- folding one record ----------------------------------------------------------
    def state(self, name: str, role: str, version: str) -> TargetState:
        state = self.targets.get(name)
        if state is None:
            state = self.targets[name] = TargetState(
                role, name, version, self.seed, dict(self.layouts)
            )
        return state

    def update(self, record: PairRecord) -> None:
        """Fold one pair record into the state of every target it mentions."""
        self.processed += 1
        production = record.production
        if production is None:
            return
        p_out = extract(self.protocol, self.outputs, production)
        rows = None
        if self.layouts:
            rows = feature_rows(self.protocol, record.request_body, self.features)
        for name, shadow in record.shadows.items():
            st = self.state(name, shadow.role, shadow.version)
            st.requests += 1
            st.candidate_outcomes[shadow.outcome] += 1
            st.production_outcomes[production.outcome] += 1
            if rows is not None:
                for feature, hist in st.inputs.items():
                    if feature in rows:
                        hist.add(rows[feature])
            if shadow.outcome == "dropped":
                continue
            if production.outcome == "ok" and shadow.outcome == "ok":
                st.production_latency.add(np.array([production.latency_s * 1000]))
                st.candidate_latency.add(np.array([shadow.latency_s * 1000]))
            _add_cost(st, production.cost, shadow.cost)
            if p_out is None:
                continue
            c_out = extract(self.protocol, self.outputs, shadow)
            compared = None if c_out is None else compare(p_out, c_out)
            if compared is None:
                continue
            self._fold(st, record, compared, rows, production.body, shadow.body)

    def _fold(
        self,
        st: TargetState,
        record: PairRecord,
        compared: Compared,
        rows: dict[str, np.ndarray] | None,
        production_body: bytes,
        candidate_body: bytes,
    ) -> None:
        st.compared += 1
        st.rows += compared.rows
        p, c = compared.production_scores, compared.candidate_scores
        if p is not None and c is not None:
            diff = c - p
            absolute = np.abs(diff)
            st.diff.add(diff)
            st.abs_diff.add(absolute)
            st.abs_sketch.add(absolute)
            st.production_hist.add(p)
            st.candidate_hist.add(c)
            st.abs_hist.add(absolute)
            ids = [f"{record.request_id}#{i}" for i in range(compared.rows)]
            assert st.reservoir is not None
            st.reservoir.add(ids, np.column_stack([p, c, absolute, diff]))
            worst = float(absolute.max())
            if len(st.examples) < 10 or worst > st.examples[-1].abs_diff:
                st.add_example(
                    TopExample(
                        worst,
                        record.request_id,
                        production_body[:2048].decode("utf-8", "replace"),
                        candidate_body[:2048].decode("utf-8", "replace"),
                    )
                )
        pl, cl = compared.production_labels, compared.candidate_labels
        if pl is not None and cl is not None:
            st.add_flips(pl, cl)
            if rows is not None:
                _add_slices(st, rows, pl != cl)
            self._remember(record.request_id, st.name, pl, cl)

    # -- late ground truth ----------------------------------------------------------
    def _remember(self, request_id: str, target: str, production: Any, candidate: Any) -> None:
        entry = self._labels.setdefault(request_id, {})
        entry[target] = (production, candidate)
        self._labels.move_to_end(request_id)
        while len(self._labels) > FEEDBACK_WINDOW:
            self._labels.popitem(last=False)

    def feedback(self, request_id: str, label: Any) -> bool:
        """Join a late true label to a remembered request; False when it is not known."""
        with self.lock:
            entry = self._labels.pop(request_id, None)
            if entry is None:
                return False
            truth = np.asarray([label]).astype(str).reshape(-1)
            for target, (production, candidate) in entry.items():
                st = self.targets[target]
                n = min(len(truth), len(production))
                if len(truth) == 1:
                    truth_rows = np.repeat(truth, len(production))
                    n = len(production)
                else:
                    truth_rows = truth[:n]
                st.feedback_rows += n
                st.production_correct += int(np.count_nonzero(production[:n] == truth_rows))
                st.candidate_correct += int(np.count_nonzero(candidate[:n] == truth_rows))
            return True

    # -- snapshots -------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What two snapshots must share to be merged."""
        return {
            "seed": self.seed,
            "reference": None if self.reference is None else self.reference.fingerprint(),
            "features": sorted(self.layouts),
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "schema": SCHEMA,
                "written_at": time.time(),
                "layout": self.fingerprint(),
                "production": {
                    "name": self.config.production.name,
                    "version": self.config.production.version,
                },
                "comparator": {
                    "processed": self.processed,
                    "dropped": self.dropped,
                    "busy_s": self.busy_s,
                },
                "targets": {name: st.to_json() for name, st in self.targets.items()},
            }

    def load(self, snapshot: dict[str, Any], source: str = "snapshot") -> None:
        """Merge a snapshot into this state; StateError when its layout differs."""
        targets = read_snapshot(snapshot, self.fingerprint(), source)
        with self.lock:
            for name, state in targets.items():
                if name in self.targets:
                    self.targets[name].merge(state)
                else:
                    self.targets[name] = state


def read_snapshot(
    snapshot: dict[str, Any], expected: dict[str, Any] | None, source: str
) -> dict[str, TargetState]:
    """The target states of a snapshot document, checked against ``expected``."""
    if not isinstance(snapshot, dict) or snapshot.get("schema") != SCHEMA:
        found = snapshot.get("schema") if isinstance(snapshot, dict) else type(snapshot).__name__
        raise StateError(f"{source}: not a {SCHEMA} snapshot (schema {found!r})")
    layout = snapshot.get("layout")
    if expected is not None and layout != expected:
        raise StateError(
            f"{source}: written with another layout ({layout}); this comparator uses "
            f"{expected}; refusing to mix them"
        )
    targets = snapshot.get("targets")
    if not isinstance(targets, dict):
        raise StateError(f"{source}: snapshot has no targets")
    return {name: TargetState.from_json(data) for name, data in targets.items()}


def _add_cost(st: TargetState, production: Cost | None, candidate: Cost | None) -> None:
    for cost, cpu, rss, threads, children in (
        (production, st.production_cpu_ms, st.production_rss_mb, st.production_threads,
         st.production_children),
        (candidate, st.candidate_cpu_ms, st.candidate_rss_mb, st.candidate_threads,
         st.candidate_children),
    ):  # fmt: skip
        if cost is None:
            continue
        if cost.cpu_s is not None:
            cpu.add(np.array([cost.cpu_s * 1000]))
        if cost.rss_bytes is not None:
            rss.add(np.array([cost.rss_bytes / MiB]))
        if cost.threads is not None:
            threads.add(np.array([float(cost.threads)]))
        if cost.child_processes is not None:
            children.add(np.array([float(cost.child_processes)]))


def _add_slices(st: TargetState, rows: dict[str, np.ndarray], flipped: np.ndarray) -> None:
    for feature, values in rows.items():
        layout = st.feature_layouts.get(feature)
        if layout is None or len(values) != len(flipped):
            continue
        bins = layout.index(values)
        for b, f in zip(bins.tolist(), flipped.tolist(), strict=True):
            cell = st.slice_rows.setdefault(f"{feature}|{b}", [0, 0])
            cell[0] += 1
            cell[1] += int(f)


def merge_snapshots(snapshots: list[tuple[str, dict[str, Any]]]) -> dict[str, TargetState]:
    """Merge snapshots from several sources exactly; they must share one layout."""
    if not snapshots:
        raise StateError("no snapshot to merge")
    first_source, first = snapshots[0]
    expected = first.get("layout") if isinstance(first, dict) else None
    merged: dict[str, TargetState] = {}
    for source, snapshot in snapshots:
        for name, state in read_snapshot(snapshot, expected, source).items():
            if name in merged:
                merged[name].merge(state)
            else:
                merged[name] = state
    return merged
