"""The streaming comparator: pair records in, mergeable per-target state out.

It runs on its own thread, fed by a bounded inbox from the pair stream, so the proxy's
event loop only pays a ``deque.append`` per record (a full inbox drops the record and counts
it). The thread takes records in micro-batches and folds each into the state of every
target it mentions; ``snapshot`` serialises that state for ``/admin/snapshot``, the
snapshot file and ``shadowproxy report``.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from typing import Any

import numpy as np

from shadowproxy.background import let_loop_run, run_in_background
from shadowproxy.compare.feedback import FeedbackWindow, TargetLabels
from shadowproxy.compare.inbox import Inbox
from shadowproxy.compare.inputs import feature_rows
from shadowproxy.compare.pairs import (
    Compared,
    RowCompared,
    as_comparable,
    compare,
    compare_rows,
    read,
)
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.reservoir import Reservoir
from shadowproxy.compare.target import EXAMPLE_BYTES, RESERVOIR_ROWS, TOP_EXAMPLES, TargetState
from shadowproxy.compare.target import Example as TopExample
from shadowproxy.config.model import Config
from shadowproxy.errors import StateError
from shadowproxy.pairing.record import Cost, PairRecord
from shadowproxy.protocols import PayloadProtocol, protocol_for
from shadowproxy.protocols.arrays import json_type
from shadowproxy.protocols.base import OneRow
from shadowproxy.shadow.sampling import (
    MIRROR_PURPOSE,
    RESERVOIR_PURPOSE,
    is_sampled,
    keyed_salt,
)

log = logging.getLogger(__name__)

SCHEMA = "shadowproxy.snapshot/v1"
BATCH = 256
FLUSH_EVERY = 256  # pairs buffered per target before they are folded in
FLUSH_INTERVAL_S = 1.0  # ... or at the latest this long after the last fold
FEEDBACK_WINDOW = 100_000  # request ids remembered for late ground truth
# Records waiting for the thread. It keeps up with ~60,000 pairs/s of its own: a backlog
# builds only while the proxy's CPU is saturated, and then what does not fit is shed and
# counted. A small inbox matters there: every queued record is four objects the garbage
# collector tracks, and each full collection (about one a second under load) walks them all
# with the event loop stopped. 10,000 queued records made each one last ~10 ms.
INBOX_RECORDS = 1024
MiB = 1024 * 1024


class Comparator:
    """Per-target comparison state, updated off the event loop."""

    def __init__(
        self,
        config: Config,
        reference: Reference | None = None,
        *,
        queue_size: int = INBOX_RECORDS,
        protocol: PayloadProtocol | None = None,
        sampling_key: bytes | None = None,
    ) -> None:
        self.config = config
        # compare.sample_rate decides from the same point as mirroring: see Proxy.
        self.salt = keyed_salt(sampling_key, MIRROR_PURPOSE)
        # Request ids may come from clients: with a key, none can compute which of its
        # requests enter the reservoirs (see shadowproxy.compare.reservoir).
        self.reservoir_key = reservoir_key_from(sampling_key)
        self.seed = config.compare.seed
        self.sample_rate = config.compare.sample_rate
        self.outputs = config.compare.outputs
        self.protocol = protocol or protocol_for(config)
        self.reference = reference
        self.features = config.compare.features
        self.layouts = (
            {f.name: f.layout for f in reference.features if f.layout is not None}
            if reference is not None
            else {}
        )
        # Categorical features: counted over the reference's categories, for chi-square.
        self.category_layouts = (
            {
                f.name: tuple(sorted(f.categories))
                for f in reference.features
                if f.kind == "categorical" and f.name in self.features
            }
            if reference is not None
            else {}
        )
        self.targets: dict[str, TargetState] = {}
        # Names this replica's line of snapshots: kept across restarts (load takes it from
        # the snapshot), so a report given the same replica twice can tell.
        self.replica_id = secrets.token_hex(8)
        self.lock = threading.Lock()
        self.queue: Inbox[PairRecord | None] = Inbox(queue_size)
        self.dropped = 0
        self.processed = 0
        self.busy_s = 0.0  # thread time spent folding records, for the per-pair cost
        self.window = FeedbackWindow(FEEDBACK_WINDOW)
        self._thread: threading.Thread | None = None
        self.background_priority: bool | None = None  # thread lowered to nice 19; None: not started
        self._pending: dict[str, _Pending] = {}

    # -- the event-loop side ---------------------------------------------------------
    def submit(self, record: PairRecord) -> None:
        """Queue a record; never blocks (a full inbox drops it, counted)."""
        if self.sample_rate < 1.0 and not is_sampled(
            record.request_id, self.sample_rate, self.salt
        ):
            return
        if not self.queue.put(record):
            self.dropped += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="comparator", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Finish what is queued (within ``timeout_s``), then stop the thread."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        self.queue.put_always(None)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        # Production's event loop shares the core and the interpreter lock with this thread:
        # see shadowproxy.background for why it runs at nice 19 and lets go between records.
        self.background_priority = run_in_background()
        flushed_at = time.monotonic()
        while True:
            batch = self.queue.take(BATCH, FLUSH_INTERVAL_S)
            if not batch:
                # Idle: fold what is buffered, so the gauges catch up with the traffic.
                with self.lock:
                    self.flush()
                flushed_at = time.monotonic()
                continue
            records = [r for r in batch if r is not None]
            stopping = len(records) < len(batch)  # stop() queued None
            started = time.thread_time()
            with self.lock:
                for record in records:
                    let_loop_run()
                    try:
                        self.update(record)
                    except Exception:  # one odd record must not stop the comparator
                        log.exception("comparator failed on record %s", record.request_id)
                # Folding costs the same for 1 pair as for 256: at low rates, waiting for a
                # full buffer (or the interval) keeps the cost per pair low.
                if stopping or time.monotonic() - flushed_at >= FLUSH_INTERVAL_S:
                    self.flush()
                    flushed_at = time.monotonic()
                self.busy_s += time.thread_time() - started
            if stopping:
                return

    # -- folding one record ----------------------------------------------------------
    def state(self, name: str, role: str, version: str) -> TargetState:
        state = self.targets.get(name)
        if state is None:
            state = self.targets[name] = TargetState(
                role, name, version, self.seed, dict(self.layouts), dict(self.category_layouts),
                reservoir=Reservoir(RESERVOIR_ROWS, self.seed, 4, self.reservoir_key),
            )  # fmt: skip
        return state

    def update(self, record: PairRecord) -> None:
        """Fold one pair record into the state of every target it mentions."""
        self.processed += 1
        production = record.production
        if production is None:
            return
        p_out = read(self.protocol, self.outputs, production)
        rows = None
        if self.layouts or self.category_layouts:
            rows = feature_rows(
                self.protocol, record.request_body, self.features, self.category_layouts
            )
        remembered: list[TargetLabels] = []  # labels to join late ground truth to
        for name, shadow in record.shadows.items():
            st = self.state(name, shadow.role, shadow.version)
            st.requests += 1
            st.candidate_outcomes[shadow.outcome] += 1
            if shadow.outcome != "dropped":
                # Production's outcomes on the requests the target was sent, so that
                # error_rate_delta compares the two on the same requests.
                st.production_outcomes[production.outcome] += 1
            if rows is not None:
                for feature, hist in st.inputs.items():
                    if feature in rows:
                        hist.add(rows[feature])
                for feature, counts in st.categorical.items():
                    if feature in rows:
                        counts.add(rows[feature].tolist())
            if shadow.outcome == "dropped":
                continue
            buf = self._buffer(name)
            if production.outcome == "ok" and shadow.outcome == "ok":
                buf.production_latency.append(production.latency_s * 1000)
                buf.candidate_latency.append(shadow.latency_s * 1000)
            buf.add_costs(production.cost, shadow.cost)
            if p_out is None:
                continue
            c_out = read(self.protocol, self.outputs, shadow)
            if c_out is None:
                continue
            if type(p_out) is OneRow and type(c_out) is OneRow:
                # The common case, kept free of numpy: see _Pending.
                row = compare_rows(p_out, c_out)
                if row is not None:
                    self._fold_row(st, record, row, rows, production.body, shadow.body)
                    pl, cl = row.production_label, row.candidate_label
                    if pl is not None and cl is not None:
                        remembered.append((name, (pl,), (cl,)))
                continue
            compared = compare(as_comparable(p_out), as_comparable(c_out))
            if compared is None:
                continue
            self._fold(st, record, compared, rows, production.body, shadow.body)
            if compared.production_labels is not None and compared.candidate_labels is not None:
                remembered.append(
                    (name, compared.production_labels.tolist(), compared.candidate_labels.tolist())
                )
        if remembered:
            self.window.remember(record.request_id, remembered)

    def _fold(
        self,
        st: TargetState,
        record: PairRecord,
        compared: Compared,
        rows: dict[str, np.ndarray] | None,
        production_body: bytes,
        candidate_body: bytes,
    ) -> None:
        """Buffer one compared pair; ``flush`` folds the buffer in vectorised."""
        st.compared += 1
        st.rows += compared.rows
        buf = self._buffer(st.name)
        buf.seal()  # keep the record order of what one-row pairs buffered before
        p, c = compared.production_scores, compared.candidate_scores
        if p is not None and c is not None:
            buf.production.append(p)
            buf.candidate.append(c)
            buf.ids.extend(f"{record.request_id}#{i}" for i in range(compared.rows))
            _offer_example(
                st, float(np.max(np.abs(c - p))), record, production_body, candidate_body
            )
        pl, cl = compared.production_labels, compared.candidate_labels
        if pl is not None and cl is not None:
            buf.production_labels.append(pl)
            buf.candidate_labels.append(cl)
            if rows is not None:
                _add_slices(st, rows, pl != cl)
        buf.count += 1
        if buf.count >= FLUSH_EVERY:
            self._flush_target(st, buf)

    def _fold_row(
        self,
        st: TargetState,
        record: PairRecord,
        row: RowCompared,
        rows: dict[str, np.ndarray] | None,
        production_body: bytes,
        candidate_body: bytes,
    ) -> None:
        """``_fold`` for a one-row pair, in plain Python values (same state, same order)."""
        st.compared += 1
        st.rows += 1
        buf = self._buffer(st.name)
        p, c = row.production_score, row.candidate_score
        if p is not None and c is not None:
            buf.production_values.append(p)
            buf.candidate_values.append(c)
            buf.ids.append(f"{record.request_id}#0")
            _offer_example(st, abs(c - p), record, production_body, candidate_body)
        pl, cl = row.production_label, row.candidate_label
        if pl is not None and cl is not None:
            buf.production_label_values.append(pl)
            buf.candidate_label_values.append(cl)
            if rows is not None:
                _add_slices(st, rows, np.array([pl != cl]))
        buf.count += 1
        if buf.count >= FLUSH_EVERY:
            self._flush_target(st, buf)

    def _buffer(self, name: str) -> _Pending:
        buf = self._pending.get(name)
        if buf is None:
            buf = self._pending[name] = _Pending()
        return buf

    def flush(self) -> None:
        """Fold every buffered pair into the statistics (call with the lock held)."""
        for name, buf in self._pending.items():
            if buf.count:
                let_loop_run()
                self._flush_target(self.targets[name], buf)

    def _flush_target(self, st: TargetState, buf: _Pending) -> None:
        buf.seal()
        if buf.production:
            p = np.concatenate(buf.production)
            c = np.concatenate(buf.candidate)
            diff = c - p
            absolute = np.abs(diff)
            st.diff.add(diff)
            st.abs_diff.add(absolute)
            st.abs_sketch.add(absolute)
            st.production_hist.add(p)
            st.candidate_hist.add(c)
            st.abs_hist.add(absolute)
            # A fold of 256 pairs holds the interpreter lock for about a millisecond in all:
            # let the event loop in between its parts (see shadowproxy.background).
            let_loop_run()
            assert st.reservoir is not None
            st.reservoir.add(buf.ids, np.column_stack([p, c, absolute, diff]))
            let_loop_run()
        if buf.production_labels:
            st.add_flips(
                np.concatenate(buf.production_labels), np.concatenate(buf.candidate_labels)
            )
        for side in ("production", "candidate"):
            values = {
                "latency": getattr(buf, f"{side}_latency"),
                **cost_values(getattr(buf, f"{side}_costs")),
            }
            for kind, kind_values in values.items():
                if kind_values:
                    target = getattr(st, f"{side}_{kind}")
                    target.add(np.asarray(kind_values, dtype=np.float64))
        buf.clear()

    # -- late ground truth ----------------------------------------------------------
    def feedback(self, request_id: str, label: Any) -> bool:
        """Join a late true label to a remembered request; False when it is not known.

        Raises ``ValueError`` (and forgets nothing) when ``label`` is not a label: see
        :func:`truth_labels`.
        """
        truth = truth_labels(label)
        with self.lock:
            entry = self.window.pop(request_id)
            if entry is None:
                return False
            for target, production, candidate in entry:
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
            "features": sorted([*self.layouts, *self.category_layouts]),
        }

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self.flush()
            return {
                "schema": SCHEMA,
                "written_at": time.time(),
                "replica": self.replica_id,
                "layout": self.fingerprint(),
                "production": self.production(),
                "comparator": {
                    "processed": self.processed,
                    "dropped": self.dropped,
                    "busy_s": self.busy_s,
                },
                "targets": {name: st.to_json() for name, st in self.targets.items()},
            }

    def production(self) -> dict[str, str]:
        """The production model every comparison was made against."""
        return {"name": self.config.production.name, "version": self.config.production.version}

    def load(self, snapshot: dict[str, Any], source: str = "snapshot") -> dict[str, str]:
        """Merge a snapshot into this state; StateError when its layout differs.

        Evidence about another production, or about another version of a configured
        target, is left out: it measured other models. Returns why, per target left out.
        """
        targets = read_snapshot(snapshot, self.fingerprint(), source, self.reservoir_key)
        left_out = superseded(snapshot.get("production"), targets, self.config)
        with self.lock:
            if isinstance(snapshot.get("replica"), str):
                self.replica_id = snapshot["replica"]
            for name, state in targets.items():
                if name in left_out:
                    continue
                if name in self.targets:
                    self.targets[name].merge(state)
                else:
                    self.targets[name] = state
        return left_out


def superseded(
    production: object, targets: dict[str, TargetState], config: Config
) -> dict[str, str]:
    """Which stored targets measured other models than ``config`` names, and why (pure).

    All of them when production was another model or version; otherwise those whose name
    is configured with another version or role. Targets no longer configured are kept:
    their evidence still describes the version it names.
    """
    now = {"name": config.production.name, "version": config.production.version}
    if isinstance(production, dict) and production != now:
        why = (
            f"measured against production {production.get('name')!r} version "
            f"{production.get('version')!r}, not {now['name']!r} version {now['version']!r}"
        )
        return dict.fromkeys(targets, why)
    configured = {c.name: ("candidate", c.version) for c in config.candidates}
    if config.baseline is not None:
        configured[config.baseline.name] = ("baseline", config.baseline.version)
    out = {}
    for name, state in targets.items():
        role_version = configured.get(name)
        if role_version is not None and (state.role, state.version) != role_version:
            out[name] = (
                f"{state.role} {name!r} version {state.version!r} is now configured as "
                f"{role_version[0]} version {role_version[1]!r}"
            )
    return out


def truth_labels(label: Any) -> np.ndarray:
    """The ground truth sent to ``/admin/feedback``, as the text the comparator compares.

    One label (for every row of the request), or a list with one per row. Labels are read
    as the models' labels are (:func:`shadowproxy.protocols.arrays.labels_array`): a
    string as it is, an integer as its digits, ``true``/``false`` as ``1``/``0`` and a
    whole float as the integer it holds, so ``1``, ``1.0`` and ``true`` all match a model
    that answers ``1`` or ``true``.

    Raises
    ------
    ValueError
        ``label`` is null, an empty list, an object, a fraction, or a list holding
        anything but labels.
    """
    values = label if type(label) is list else [label]
    if not values:
        raise ValueError("label: an empty list; send one label, or one per row")
    return np.array([_label_text(value) for value in values], dtype=str)


def _label_text(value: object) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is bool:
        return "1" if value else "0"
    if kind is int:
        return str(value)
    if kind is float:
        if math.isfinite(value) and float(value).is_integer():  # type: ignore[arg-type]
            return str(int(value))  # type: ignore[call-overload]
        raise ValueError(f"label: {value!r} is not a whole number; labels are integers or text")
    raise ValueError(
        f"label: expected a string, number or boolean, or a list of them; got {json_type(value)}"
    )


def check_distinct_replicas(snapshots: list[tuple[str, dict[str, Any]]]) -> None:
    """StateError when two snapshots come from the same replica (see ``merge_snapshots``).

    Snapshots written before replicas were named carry no id and cannot be checked.
    """
    seen: dict[str, str] = {}
    for source, snapshot in snapshots:
        replica = snapshot.get("replica") if isinstance(snapshot, dict) else None
        if not isinstance(replica, str):
            continue
        if replica in seen:
            raise StateError(
                f"{source}: the same replica as {seen[replica]} (replica {replica}); its "
                "traffic would count twice: give each replica once"
            )
        seen[replica] = source


def reservoir_key_from(sampling_key: bytes | None) -> bytes:
    """The reservoirs' secret for a sampling key (empty without one)."""
    return b"" if sampling_key is None else keyed_salt(sampling_key, RESERVOIR_PURPOSE)


def read_snapshot(
    snapshot: dict[str, Any],
    expected: dict[str, Any] | None,
    source: str,
    reservoir_key: bytes | None = b"",
) -> dict[str, TargetState]:
    """The target states of a snapshot document, checked against ``expected``;
    ``reservoir_key`` as in :meth:`Reservoir.from_json`."""
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
    try:
        return {name: TargetState.from_json(data, reservoir_key) for name, data in targets.items()}
    except StateError as exc:
        raise StateError(f"{source}: {exc}") from exc


class _Pending:
    """Values of one target waiting to be folded in, as plain Python lists.

    Appending to a list costs a fraction of a microsecond; numpy calls cost several each.
    Buffering a micro-batch and folding it with one vectorised call per statistic is what
    keeps the comparator's cost per pair low.
    """

    def __init__(self) -> None:
        self.count = 0
        self.production: list[np.ndarray] = []
        self.candidate: list[np.ndarray] = []
        self.ids: list[str] = []
        self.production_labels: list[np.ndarray] = []
        self.candidate_labels: list[np.ndarray] = []
        # One-row pairs, as plain values; seal() turns them into one array each, in order.
        self.production_values: list[float] = []
        self.candidate_values: list[float] = []
        self.production_label_values: list[str] = []
        self.candidate_label_values: list[str] = []
        self.production_latency: list[float] = []
        self.candidate_latency: list[float] = []
        # Costs are kept whole and split into their statistics at the fold: one append per
        # exchange here instead of four.
        self.production_costs: list[Cost] = []
        self.candidate_costs: list[Cost] = []

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def seal(self) -> None:
        """Move the buffered one-row values into array chunks, after what came before."""
        if self.production_values:
            self.production.append(np.array(self.production_values, dtype=np.float64))
            self.candidate.append(np.array(self.candidate_values, dtype=np.float64))
            self.production_values = []
            self.candidate_values = []
        if self.production_label_values:
            self.production_labels.append(np.array(self.production_label_values, dtype=str))
            self.candidate_labels.append(np.array(self.candidate_label_values, dtype=str))
            self.production_label_values = []
            self.candidate_label_values = []

    def add_costs(self, production: Cost | None, candidate: Cost | None) -> None:
        if production is not None:
            self.production_costs.append(production)
        if candidate is not None:
            self.candidate_costs.append(candidate)


def cost_values(costs: list[Cost]) -> dict[str, list[float]]:
    """The buffered costs of one side as the values of each cost statistic, in order."""
    return {
        "cpu_ms": [c.cpu_s * 1000 for c in costs if c.cpu_s is not None],
        "rss_mb": [c.rss_bytes / MiB for c in costs if c.rss_bytes is not None],
        "threads": [float(c.threads) for c in costs if c.threads is not None],
        "children": [float(c.child_processes) for c in costs if c.child_processes is not None],
    }


def _offer_example(
    st: TargetState, worst: float, record: PairRecord, production_body: bytes,
    candidate_body: bytes,
) -> None:  # fmt: skip
    """Keep the pair among the target's most divergent examples if it is one."""
    if len(st.examples) < TOP_EXAMPLES or worst > st.examples[-1].abs_diff:
        st.add_example(
            TopExample(
                worst,
                record.request_id,
                production_body[:EXAMPLE_BYTES].decode("utf-8", "replace"),
                candidate_body[:EXAMPLE_BYTES].decode("utf-8", "replace"),
            )
        )


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


def merge_snapshots(
    snapshots: list[tuple[str, dict[str, Any]]],
    reservoir_key: bytes | None = None,
    *,
    layout: dict[str, Any] | None = None,
    production: dict[str, str] | None = None,
) -> dict[str, TargetState]:
    """Merge snapshots from several sources exactly.

    They must share one layout (``layout`` when given, else the first one's) and one
    production model (``production`` when given), and no replica may come twice: the same
    replica's state given twice (a file and its admin URL, or two copies taken at different
    times) would count its traffic twice. ``reservoir_key`` checks the reservoirs against
    the replicas' sampling key; None (no key at hand) takes keyed reservoirs as stored (see
    :meth:`Reservoir.from_json`)."""
    if not snapshots:
        raise StateError("no snapshot to merge")
    first_source, first = snapshots[0]
    expected = layout
    if expected is None:
        expected = first.get("layout") if isinstance(first, dict) else None
    check_distinct_replicas(snapshots)
    merged: dict[str, TargetState] = {}
    for source, snapshot in snapshots:
        stored = snapshot.get("production") if isinstance(snapshot, dict) else None
        if production is not None and isinstance(stored, dict) and stored != production:
            raise StateError(
                f"{source}: measured against production {stored.get('name')!r} version "
                f"{stored.get('version')!r}, but the config's production is "
                f"{production['name']!r} version {production['version']!r}"
            )
        for name, state in read_snapshot(snapshot, expected, source, reservoir_key).items():
            if name in merged:
                try:
                    merged[name].merge(state)
                except StateError as exc:
                    raise StateError(f"{source}: {exc}") from exc
            else:
                merged[name] = state
    return merged
