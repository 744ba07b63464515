"""The comparator state as Prometheus samples, and back again (pure, no I/O).

Each replica exports the part of its comparator state that adds up exactly across
replicas: integer counts, counts over fixed bins (the two score histograms, the
absolute-difference histogram, the input features over the reference's bins and
categories), count, sum, sum of squares and extremes of every moment, and the two latency
sketches as fixed histogram buckets (:mod:`shadowproxy.compare.latency`). Summing each
family over the replicas (``sum by`` its labels; ``min by`` and ``max by`` for extremes)
therefore gives the exported part of the merged state, and :func:`rebuild` turns those
sums back into :class:`~shadowproxy.compare.target.TargetState` objects.

Left out, because they do not add up or have no small label set: the seeded sample of rows,
the absolute-difference sketch (its buckets span nine decades, from 1e-9 to 1), the top-k
examples and the slice cells. The figures that need them come from snapshots only (see
:mod:`shadowproxy.compare.binned`).

Every label value is bounded: role, model and version come from the config; sides,
outcomes, histograms and quantities from fixed sets; bins and category cells from the
frozen layouts and the reference; label classes from the flip matrix's cap; latency bounds
from a fixed list. Apart from new label classes, the set of series does not change with
traffic.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from shadowproxy.compare import latency
from shadowproxy.compare.bins import BinLayout, Histogram, canonical_json
from shadowproxy.compare.moments import MOMENTS_SCHEMA, Moments
from shadowproxy.compare.sketch import QuantileSketch
from shadowproxy.compare.target import ABS_DIFF_LAYOUT, SCORE_LAYOUT, TargetState
from shadowproxy.errors import StateError

EXPORT_SCHEMA = "shadowproxy.exported/v1"
PREFIX = "shadowproxy_comparator_"
TARGET = ("role", "model", "version")
SIDES = ("production", "candidate")
NAN_BIN = "nan"
UNSEEN_CELL, MISSING_CELL = "unseen", "missing"
FOLDED_PAIR = "other"  # the flip matrix's only key once it holds too many label pairs

Merge = Literal["sum", "min", "max", "count"]
T = TypeVar("T")


@dataclass(frozen=True)
class Family:
    """One exported metric family and how replicas combine into the merged value."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = TARGET
    merge: Merge = "sum"

    @property
    def sample_name(self) -> str:
        """The name of the family's samples, as scraped and queried."""
        suffix = {"counter": "_total", "histogram": "_bucket"}.get(self.kind, "")
        return self.name + suffix


def _counter(name: str, help: str, *labels: str) -> Family:
    return Family(PREFIX + name, "counter", help, (*TARGET, *labels))


def _gauge(name: str, help: str, *labels: str, merge: Merge = "sum") -> Family:
    return Family(PREFIX + name, "gauge", help, (*TARGET, *labels), merge)


# Plain counts: TargetState attribute -> family.
COUNTS = {
    "requests": _counter("requests", "Pair records that include the target."),
    "compared": _counter("compared", "Pairs whose two answers could be compared."),
    "rows": _counter("rows", "Rows compared (an answer may hold several)."),
    "label_rows": _counter("label_rows", "Compared rows with a label on both sides."),
    "agree": _counter("label_agreements", "Compared rows whose two labels are equal."),
    "feedback_rows": _counter("feedback_rows", "Rows joined to late ground truth."),
}
FEEDBACK_CORRECT = _counter(
    "feedback_correct", "Rows joined to ground truth that a side labelled right.", "side"
)
OUTCOMES = _counter(
    "outcomes", "Exchanges in pair records, by side and outcome.", "side", "outcome"
)
LABEL_PAIRS = _counter(
    "label_pairs",
    "Compared rows by production label and candidate label (the flip matrix).",
    "production_label",
    "candidate_label",
)
LABEL_PAIRS_FOLDED = _counter(
    "label_pairs_folded",
    "Every compared row, once more distinct label pairs were seen than the flip matrix keeps.",
)
BINS = _counter(
    "bin",
    "Values per bin of a fixed layout: scores on 20 bins over [0, 1] plus two open outer "
    "bins, absolute score differences on the fixed difference layout; bin 'nan' counts NaN.",
    "histogram",
    "bin",
)
INPUT_BINS = _counter(
    "input_bin", "Input feature values per bin of the reference's layout.", "feature", "bin"
)
INPUT_CATEGORIES = _counter(
    "input_category",
    "Categorical input values per cell: the index of a reference category, 'unseen' for a "
    "value the reference never saw, 'missing' for none.",
    "feature",
    "cell",
)
MOMENT_COUNT = _counter("moment_count", "Finite values folded into a moment.", "quantity")
MOMENT_NONFINITE = _counter("moment_nonfinite", "Non-finite values left out.", "quantity")
MOMENT_SUM = _gauge("moment_sum", "Sum of the finite values of a moment.", "quantity")
MOMENT_SUM_SQUARES = _gauge(
    "moment_sum_squares", "Sum of the squares of the finite values of a moment.", "quantity"
)
MOMENT_MIN = _gauge("moment_min", "Smallest value of a moment.", "quantity", merge="min")
MOMENT_MAX = _gauge("moment_max", "Largest value of a moment.", "quantity", merge="max")
LATENCY = Family(
    PREFIX + "latency_seconds",
    "histogram",
    "Latency of paired exchanges in which both sides answered, per side: the comparator's "
    "1 % sketch buckets grouped by 8 into fixed bounds.",
    (*TARGET, "side", "le"),
)
LATENCY_NONFINITE = _counter("latency_nonfinite", "Non-finite latencies left out.", "side")
LATENCY_MIN = _gauge("latency_min_seconds", "Smallest latency.", "side", merge="min")
LATENCY_MAX = _gauge("latency_max_seconds", "Largest latency.", "side", merge="max")
LAYOUT = Family(
    PREFIX + "layout_info",
    "gauge",
    "1 per replica; the fingerprint of the seed, reference, features and bin layouts its "
    "state is counted over (replicas merge only when it is the same).",
    ("fingerprint",),
    "count",
)

FAMILIES: tuple[Family, ...] = (
    *COUNTS.values(), FEEDBACK_CORRECT, OUTCOMES, LABEL_PAIRS, LABEL_PAIRS_FOLDED, BINS,
    INPUT_BINS, INPUT_CATEGORIES, MOMENT_COUNT, MOMENT_NONFINITE, MOMENT_SUM,
    MOMENT_SUM_SQUARES, MOMENT_MIN, MOMENT_MAX, LATENCY, LATENCY_NONFINITE, LATENCY_MIN,
    LATENCY_MAX, LAYOUT,
)  # fmt: skip
BY_SAMPLE_NAME = {family.sample_name: family for family in FAMILIES}
_COUNT_ATTRS = {family.name: attr for attr, family in COUNTS.items()}

HISTOGRAMS = {
    "production_score": "production_hist",
    "candidate_score": "candidate_hist",
    "abs_diff": "abs_hist",
}
MOMENT_QUANTITIES = (
    "diff", "abs_diff", "production_cpu_ms", "candidate_cpu_ms", "production_rss_mb",
    "candidate_rss_mb", "production_threads", "candidate_threads", "production_children",
    "candidate_children",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One exported value: its family, its labels (every label of the family) and value."""

    family: Family
    labels: Mapping[str, str]
    value: float


def export_fingerprint(comparator_fingerprint: Mapping[str, Any]) -> str:
    """What replicas must share for their exported state to be summed.

    The comparator's own fingerprint (seed, reference, features) plus the fixed layouts and
    sketch parameters the export is counted over, and this module's schema.
    """
    body = {
        "schema": EXPORT_SCHEMA,
        "comparator": dict(comparator_fingerprint),
        "score_bins": SCORE_LAYOUT.fingerprint(),
        "abs_diff_bins": ABS_DIFF_LAYOUT.fingerprint(),
        "latency": [latency.FINE.alpha, latency.GROUP, *latency.RANGE_MS],
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def layout_sample(fingerprint: str) -> Sample:
    return Sample(LAYOUT, {"fingerprint": fingerprint}, 1.0)


# -- export ---------------------------------------------------------------------------


def target_samples(st: TargetState) -> Iterator[Sample]:
    """Every exported sample of one target's state."""
    target = {"role": st.role, "model": st.name, "version": st.version}

    def sample(family: Family, value: float, **labels: str) -> Sample:
        return Sample(family, {**target, **labels}, float(value))

    for attr, family in COUNTS.items():
        yield sample(family, getattr(st, attr))
    for side in SIDES:
        yield sample(FEEDBACK_CORRECT, getattr(st, f"{side}_correct"), side=side)
        for outcome, count in getattr(st, f"{side}_outcomes").items():
            yield sample(OUTCOMES, count, side=side, outcome=outcome)
    for key, count in st.flips.items():
        if key == FOLDED_PAIR:
            yield sample(LABEL_PAIRS_FOLDED, count)
        else:
            production, candidate = key.split("\x1f")
            yield sample(LABEL_PAIRS, count, production_label=production, candidate_label=candidate)
    for name, attr in HISTOGRAMS.items():
        for index, count in _bins(getattr(st, attr)):
            yield sample(BINS, count, histogram=name, bin=index)
    for feature, hist in st.inputs.items():
        for index, count in _bins(hist):
            yield sample(INPUT_BINS, count, feature=feature, bin=index)
    for feature, cells in st.categorical.items():
        for i, count in enumerate(cells.counts[:-1].tolist()):
            yield sample(INPUT_CATEGORIES, count, feature=feature, cell=str(i))
        yield sample(INPUT_CATEGORIES, cells.unseen, feature=feature, cell=UNSEEN_CELL)
        yield sample(INPUT_CATEGORIES, cells.missing, feature=feature, cell=MISSING_CELL)
    for quantity in MOMENT_QUANTITIES:
        m: Moments = getattr(st, quantity)
        yield sample(MOMENT_COUNT, m.count, quantity=quantity)
        yield sample(MOMENT_NONFINITE, m.nonfinite, quantity=quantity)
        # sum and sum of squares from the stable (mean, M2) form; summed over replicas they
        # give the merged mean and variance to floating-point rounding.
        total = m.mean * m.count if m.count else 0.0
        yield sample(MOMENT_SUM, total, quantity=quantity)
        yield sample(MOMENT_SUM_SQUARES, m.m2 + total * m.mean if m.count else 0.0,
                     quantity=quantity)  # fmt: skip
        if m.count:
            yield sample(MOMENT_MIN, m.min, quantity=quantity)
            yield sample(MOMENT_MAX, m.max, quantity=quantity)
    for side in SIDES:
        sketch: QuantileSketch = getattr(st, f"{side}_latency")
        for le, count in latency.cumulative_buckets(sketch):
            yield sample(LATENCY, count, side=side, le=le)
        yield sample(LATENCY_NONFINITE, sketch.nonfinite, side=side)
        if sketch.count:  # the sketch is in ms, the export in seconds
            yield sample(LATENCY_MIN, sketch.min / 1000, side=side)
            yield sample(LATENCY_MAX, sketch.max / 1000, side=side)


def _bins(hist: Histogram) -> Iterator[tuple[str, int]]:
    for index, count in enumerate(hist.counts.tolist()):
        yield str(index), count
    yield NAN_BIN, hist.nan


# -- rebuild --------------------------------------------------------------------------


@dataclass
class _Parts:
    """One target's summed samples, gathered before they become its state."""

    state: TargetState
    moments: dict[str, dict[str, float]] = field(default_factory=dict)
    latencies: dict[str, dict[str, Any]] = field(default_factory=dict)


def rebuild(
    samples: Iterable[Sample],
    seed: int,
    feature_layouts: Mapping[str, BinLayout],
    category_layouts: Mapping[str, tuple[str, ...]],
) -> dict[str, TargetState]:
    """The target states whose exported samples, summed over replicas, are ``samples``.

    Parameters
    ----------
    samples
        One sample per family and label set, already merged over the replicas (sums,
        minima and maxima as each family's ``merge`` says). The layout family is ignored.
    seed
        The comparator seed of the config the replicas run.
    feature_layouts, category_layouts
        The reference's bins per numeric input feature and categories per categorical one.

    Returns
    -------
    dict
        Model name to state. What the export leaves out (the sample of rows, the
        absolute-difference sketch, examples, slices) is empty.

    Raises
    ------
    StateError
        On a sample that does not fit the layouts, a count that is not a non-negative
        integer, or one model seen with two roles or versions.
    """
    parts: dict[str, _Parts] = {}
    for s in samples:
        if s.family is LAYOUT:
            continue
        labels = s.labels
        name = labels.get("model", "")
        target = (labels.get("role", ""), name, labels.get("version", ""))
        entry = parts.get(name)
        if entry is None:
            if target[0] not in ("candidate", "baseline") or not name:
                raise StateError(f"{s.family.sample_name}: not a shadow target: {dict(labels)}")
            entry = parts[name] = _Parts(
                TargetState(
                    target[0], name, target[2], seed, dict(feature_layouts), dict(category_layouts)
                )
            )
        elif (entry.state.role, entry.state.name, entry.state.version) != target:
            raise StateError(
                f"model {name!r} is exported as {entry.state.role} {entry.state.version!r} "
                f"and as {target[0]} {target[2]!r}: the replicas run different configs"
            )
        try:
            _place(entry, s)
        except (KeyError, IndexError, ValueError) as exc:
            raise StateError(f"{s.family.sample_name}{dict(labels)}: {exc}") from exc
    for entry in parts.values():
        _finish(entry)
    return {name: entry.state for name, entry in parts.items()}


def _place(entry: _Parts, s: Sample) -> None:
    st, family, labels = entry.state, s.family, s.labels
    if family.merge == "sum" and family.kind == "counter":
        value: float = _count(s.value)
    else:
        value = s.value
    if family.name in _COUNT_ATTRS:
        setattr(st, _COUNT_ATTRS[family.name], value)
    elif family is FEEDBACK_CORRECT:
        setattr(st, f"{_one_of(labels['side'], SIDES)}_correct", value)
    elif family is OUTCOMES:
        outcomes = getattr(st, f"{_one_of(labels['side'], SIDES)}_outcomes")
        outcomes[_one_of(labels["outcome"], tuple(outcomes))] = value
    elif family is LABEL_PAIRS:
        # Prometheus drops empty label values: an empty label class comes back missing.
        pair = f"{labels.get('production_label', '')}\x1f{labels.get('candidate_label', '')}"
        st.flips[pair] = int(value)
    elif family is LABEL_PAIRS_FOLDED:
        st.flips[FOLDED_PAIR] = int(value)
    elif family is BINS:
        _set_bin(getattr(st, HISTOGRAMS[_one_of(labels["histogram"], tuple(HISTOGRAMS))]),
                 labels["bin"], int(value))  # fmt: skip
    elif family is INPUT_BINS:
        feature = labels["feature"]
        if feature not in st.inputs:
            raise ValueError(f"feature {feature!r} is not in the reference")
        _set_bin(st.inputs[feature], labels["bin"], int(value))
    elif family is INPUT_CATEGORIES:
        _set_cell(st, labels["feature"], labels["cell"], int(value))
    elif family.name.startswith(PREFIX + "moment_"):
        quantity = _one_of(labels["quantity"], MOMENT_QUANTITIES)
        entry.moments.setdefault(quantity, {})[family.name.removeprefix(PREFIX)] = value
    else:  # the latency families
        parts = entry.latencies.setdefault(_one_of(labels["side"], SIDES), {"buckets": {}})
        if family is LATENCY:
            parts["buckets"][labels["le"]] = _count(value)
        elif family is LATENCY_NONFINITE:
            parts["nonfinite"] = int(value)
        else:
            parts["min" if family is LATENCY_MIN else "max"] = value * 1000


def _finish(entry: _Parts) -> None:
    st = entry.state
    for quantity, m in entry.moments.items():
        count = int(m.get("moment_count", 0))
        total, squares = m.get("moment_sum", 0.0), m.get("moment_sum_squares", 0.0)
        mean = total / count if count else 0.0
        moments = {
            "schema": MOMENTS_SCHEMA,
            "count": count,
            "nonfinite": int(m.get("moment_nonfinite", 0)),
            "mean": mean,
            # Rounding can leave a tiny negative residue where every value was equal.
            "m2": max(0.0, squares - total * mean) if count else 0.0,
            "min": m.get("moment_min"),
            "max": m.get("moment_max"),
        }
        setattr(st, quantity, _checked(Moments.from_json, moments, st, quantity))
    for side, parts in entry.latencies.items():
        setattr(st, f"{side}_latency", _checked(_latency_sketch, parts, st, f"{side} latency"))


def _latency_sketch(parts: dict[str, Any]) -> QuantileSketch:
    return latency.sketch_from_buckets(
        parts["buckets"], parts.get("min"), parts.get("max"), parts.get("nonfinite", 0)
    )


def _checked(build: Callable[[dict[str, Any]], T], data: dict[str, Any], st: TargetState,
             quantity: str) -> T:  # fmt: skip
    try:
        return build(data)
    except StateError as exc:
        raise StateError(f"{st.role} {st.name!r}, {quantity}: {exc}") from exc


def _count(value: float) -> int:
    if not (math.isfinite(value) and value >= 0 and float(value).is_integer()):
        raise ValueError(f"a count must be a non-negative integer, got {value!r}")
    return int(value)


def _one_of(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _set_bin(hist: Histogram, index: str, count: int) -> None:
    if index == NAN_BIN:
        hist.nan = count
        return
    i = int(index)
    if not 0 <= i < hist.layout.bins:
        raise ValueError(f"bin {i} is outside the {hist.layout.bins} bins of the layout")
    hist.counts[i] = count


def _set_cell(st: TargetState, feature: str, cell: str, count: int) -> None:
    cells = st.categorical.get(feature)
    if cells is None:
        raise ValueError(f"feature {feature!r} is not a categorical feature of the reference")
    if cell == MISSING_CELL:
        cells.missing = count
        return
    i = len(cells.categories) if cell == UNSEEN_CELL else int(cell)
    if not 0 <= i <= len(cells.categories):
        raise ValueError(f"cell {i} is outside the {len(cells.categories)} categories")
    cells.counts[i] = count
