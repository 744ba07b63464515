"""The comparator's state for one mirrored target: counts, sketches and samples.

Everything here is mergeable: counts and histograms over fixed bins add up, moments merge
by the parallel formula, quantile sketches have fixed logarithmic buckets, the sample is a
seeded bottom-k reservoir and the examples are the top-k by divergence. Merging the states
of two replicas therefore gives what one process would have kept for all their traffic, and
memory stays bounded however long it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowproxy.compare.bins import BinLayout, Histogram
from shadowproxy.compare.categories import CategoryCounts
from shadowproxy.compare.moments import Moments
from shadowproxy.compare.reservoir import Reservoir
from shadowproxy.compare.sketch import QuantileSketch
from shadowproxy.errors import StateError
from shadowproxy.pairing.record import OUTCOMES

# Scores are mostly probabilities; values outside [0, 1] land in the outer bins.
SCORE_LAYOUT = BinLayout.uniform(0.0, 1.0, 20)
ABS_DIFF_LAYOUT = BinLayout((0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5))
# Distinct (production, candidate) label pairs the flip matrix keeps. Past that many the
# matrix is too large to read and its memory unbounded: it becomes one "other" cell. The
# rule depends only on the set of pairs seen, never on their order, so merging replicas
# gives what one process would have kept.
MAX_FLIP_PAIRS = 1024
OTHER = "other"
TOP_EXAMPLES = 10
EXAMPLE_BYTES = 2048
RESERVOIR_ROWS = 4096
# Reservoir columns: production score, candidate score, |difference|, candidate - production.
P_SCORE, C_SCORE, ABS_DIFF, DIFF = range(4)


@dataclass
class Example:
    abs_diff: float
    request_id: str
    production: str
    candidate: str

    def key(self) -> tuple[float, str]:
        return (-self.abs_diff, self.request_id)


@dataclass
class TargetState:
    """What the comparator keeps for one candidate (or the baseline)."""

    role: str
    name: str
    version: str
    seed: int
    feature_layouts: dict[str, BinLayout] = field(default_factory=dict)
    category_layouts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    requests: int = 0  # pair records that include this target
    compared: int = 0  # of which both answers could be compared
    rows: int = 0
    candidate_outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    production_outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    label_rows: int = 0
    agree: int = 0
    flips: dict[str, int] = field(default_factory=dict)
    diff: Moments = field(default_factory=Moments)
    abs_diff: Moments = field(default_factory=Moments)
    abs_sketch: QuantileSketch = field(default_factory=QuantileSketch)
    production_hist: Histogram = field(default_factory=lambda: Histogram(SCORE_LAYOUT))
    candidate_hist: Histogram = field(default_factory=lambda: Histogram(SCORE_LAYOUT))
    abs_hist: Histogram = field(default_factory=lambda: Histogram(ABS_DIFF_LAYOUT))
    reservoir: Reservoir | None = None
    production_latency: QuantileSketch = field(default_factory=QuantileSketch)
    candidate_latency: QuantileSketch = field(default_factory=QuantileSketch)
    production_cpu_ms: Moments = field(default_factory=Moments)
    candidate_cpu_ms: Moments = field(default_factory=Moments)
    production_rss_mb: Moments = field(default_factory=Moments)
    candidate_rss_mb: Moments = field(default_factory=Moments)
    candidate_threads: Moments = field(default_factory=Moments)
    candidate_children: Moments = field(default_factory=Moments)
    production_threads: Moments = field(default_factory=Moments)
    production_children: Moments = field(default_factory=Moments)
    inputs: dict[str, Histogram] = field(default_factory=dict)
    categorical: dict[str, CategoryCounts] = field(default_factory=dict)
    slice_rows: dict[str, list[int]] = field(default_factory=dict)  # "feature|bin" -> [rows, flips]
    examples: list[Example] = field(default_factory=list)
    feedback_rows: int = 0
    production_correct: int = 0
    candidate_correct: int = 0

    def __post_init__(self) -> None:
        if self.reservoir is None:
            self.reservoir = Reservoir(RESERVOIR_ROWS, self.seed, 4)
        for name, layout in self.feature_layouts.items():
            self.inputs.setdefault(name, Histogram(layout))
        for name, categories in self.category_layouts.items():
            self.categorical.setdefault(name, CategoryCounts(categories))

    # -- updates (called by the comparator thread) -----------------------------------
    def add_example(self, example: Example) -> None:
        self.examples.append(example)
        self.examples.sort(key=Example.key)
        del self.examples[TOP_EXAMPLES:]

    def add_flips(self, production: np.ndarray, candidate: np.ndarray) -> None:
        self.label_rows += int(production.shape[0])
        same = production == candidate
        self.agree += int(np.count_nonzero(same))
        if OTHER in self.flips:
            self.flips[OTHER] += int(production.shape[0])
            return
        pairs, counts = np.unique(
            np.char.add(np.char.add(production, "\x1f"), candidate), return_counts=True
        )
        for pair, count in zip(pairs.tolist(), counts.tolist(), strict=True):
            self.flips[pair] = self.flips.get(pair, 0) + int(count)
        self._bound_flips()

    def _bound_flips(self) -> None:
        if OTHER in self.flips or len(self.flips) > MAX_FLIP_PAIRS:
            self.flips = {OTHER: sum(self.flips.values())}

    # -- merging ---------------------------------------------------------------------
    def merge(self, other: TargetState) -> None:
        # Evidence about another version is about another model: never mixed in.
        identity = (self.name, self.role, self.version, self.seed)
        if (other.name, other.role, other.version, other.seed) != identity:
            raise StateError(
                f"cannot merge state of {other.role} {other.name!r} version "
                f"{other.version!r} (seed {other.seed}) into {self.role} {self.name!r} "
                f"version {self.version!r} (seed {self.seed})"
            )
        mine_features = sorted([*self.inputs, *self.categorical])
        their_features = sorted([*other.inputs, *other.categorical])
        if mine_features != their_features:
            raise StateError(
                f"{self.name}: input features differ: {mine_features} and {their_features}"
            )
        for attr in ("requests", "compared", "rows", "label_rows", "agree", "feedback_rows",
                     "production_correct", "candidate_correct"):  # fmt: skip
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for mine, theirs in (
            (self.candidate_outcomes, other.candidate_outcomes),
            (self.production_outcomes, other.production_outcomes),
            (self.flips, other.flips),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self._bound_flips()
        for key, (rows, flips) in other.slice_rows.items():
            mine_slice = self.slice_rows.setdefault(key, [0, 0])
            mine_slice[0] += rows
            mine_slice[1] += flips
        for attr in _MERGEABLE:
            getattr(self, attr).merge(getattr(other, attr))
        for name, hist in other.inputs.items():
            self.inputs[name].merge(hist)
        for name, counts in other.categorical.items():
            self.categorical[name].merge(counts)
        for example in other.examples:
            self.add_example(example)

    # -- JSON ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "name": self.name,
            "version": self.version,
            "seed": self.seed,
            "feature_layouts": {k: v.to_json() for k, v in self.feature_layouts.items()},
            "category_layouts": {k: list(v) for k, v in self.category_layouts.items()},
        }
        # Copies, never the live containers: a snapshot is serialised after the lock that
        # took it is released, while the comparator thread goes on counting.
        for attr in _COUNTERS:
            value = getattr(self, attr)
            out[attr] = dict(value) if isinstance(value, dict) else value
        for attr in _MERGEABLE:
            out[attr] = getattr(self, attr).to_json()
        out["inputs"] = {k: v.to_json() for k, v in self.inputs.items()}
        out["categorical"] = {k: v.to_json() for k, v in self.categorical.items()}
        out["slice_rows"] = {k: list(v) for k, v in self.slice_rows.items()}
        out["examples"] = [dict(e.__dict__) for e in self.examples]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], reservoir_key: bytes | None = b"") -> TargetState:
        """Rebuild a state; ``reservoir_key`` as in :meth:`Reservoir.from_json`.

        Anything but a well-formed state is a :class:`StateError`: a snapshot is a file
        anyone could have edited, and a value of the wrong type (``null`` for a mapping)
        must be refused like a missing one, never crash the proxy reading it at start.
        """
        if not isinstance(data, dict):
            raise StateError(f"a target state must be an object, got {type(data).__name__}")
        try:
            state = cls(
                role=data["role"],
                name=data["name"],
                version=data["version"],
                seed=int(data["seed"]),
                feature_layouts={
                    k: BinLayout.from_json(v) for k, v in data["feature_layouts"].items()
                },
                # Absent from snapshots written before categorical inputs were counted.
                category_layouts={
                    k: tuple(str(c) for c in v) for k, v in data.get("category_layouts", {}).items()
                },
            )
            if not all(isinstance(data[k], str) for k in ("role", "name", "version")):
                raise ValueError("role, name and version must be strings")
            for attr in _COUNTERS:
                value = data[attr]
                if isinstance(value, dict):
                    setattr(
                        state, attr, {str(k): _count(v, f"{attr}[{k}]") for k, v in value.items()}
                    )
                else:
                    setattr(state, attr, _count(value, attr))
            for attr in _MERGEABLE:
                if attr == "reservoir":
                    state.reservoir = Reservoir.from_json(data[attr], reservoir_key)
                elif attr in _SCORE_HISTOGRAMS:
                    # Counted over fixed layouts: one from elsewhere could not be merged.
                    setattr(state, attr, Histogram.from_json(data[attr], _SCORE_HISTOGRAMS[attr]))
                else:
                    kind = type(getattr(state, attr))
                    setattr(state, attr, kind.from_json(data[attr]))
            state.inputs = {k: Histogram.from_json(v) for k, v in data["inputs"].items()}
            categorical = {
                k: CategoryCounts.from_json(v) for k, v in data.get("categorical", {}).items()
            }
            if any(
                categorical.get(k, state.categorical[k]).categories != categories
                for k, categories in state.category_layouts.items()
            ) or set(categorical) - set(state.category_layouts):
                raise StateError("categorical input counts do not match their category lists")
            state.categorical.update(categorical)
            state.slice_rows = {
                str(k): [_count(a, f"slice_rows[{k}]"), _count(b, f"slice_rows[{k}]")]
                for k, (a, b) in data["slice_rows"].items()
            }
            state.examples = [Example(**e) for e in data["examples"]]
            state.check_consistent()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            name = data.get("name")
            raise StateError(f"target state of {name!r} is malformed: {exc!r}") from exc
        return state

    def check_consistent(self) -> None:
        """ValueError unless the counts agree with each other as folding leaves them.

        A snapshot is a file anyone could have edited; counts that contradict each other
        (more agreements than labelled rows, outcomes that do not add up to the requests)
        would give rates outside [0, 1] and intervals that mean nothing.
        """
        for side, outcomes in (("candidate", self.candidate_outcomes),
                               ("production", self.production_outcomes)):  # fmt: skip
            if unknown := set(outcomes) - set(OUTCOMES):
                raise ValueError(f"{side}_outcomes: unknown outcomes {sorted(unknown)}")
        sent = self.requests - self.candidate_outcomes.get("dropped", 0)
        if sum(self.candidate_outcomes.values()) != self.requests:
            raise ValueError(
                f"candidate_outcomes add up to {sum(self.candidate_outcomes.values())}, not "
                f"to the {self.requests} requests"
            )
        # Production's: on the requests sent to the target, or (snapshots written before
        # that was so) on every request.
        if sum(self.production_outcomes.values()) not in (sent, self.requests):
            raise ValueError(
                f"production_outcomes add up to {sum(self.production_outcomes.values())}, "
                f"neither the {sent} requests sent nor all {self.requests}"
            )
        for part, whole in (
            ("compared", "requests"),
            ("agree", "label_rows"),
            ("production_correct", "feedback_rows"),
            ("candidate_correct", "feedback_rows"),
        ):
            if getattr(self, part) > getattr(self, whole):
                raise ValueError(f"{part} ({getattr(self, part)}) exceeds {whole}")
        if sum(self.flips.values()) != self.label_rows:
            raise ValueError(
                f"the flip matrix holds {sum(self.flips.values())} rows, not {self.label_rows}"
            )
        if any(key != OTHER and "\x1f" not in key for key in self.flips):
            raise ValueError("flip matrix keys must be 'production\\x1fcandidate' label pairs")
        if any(flips > rows for rows, flips in self.slice_rows.values()):
            raise ValueError("a slice has more flips than rows")


MAX_COUNT = 2**62  # far beyond any real count, and safe for every integer statistic


def _count(value: object, name: str) -> int:
    """A stored count: a non-negative JSON integer, not a float, string or boolean."""
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be an integer in [0, 2**62], got {value!r}")
    return value


_SCORE_HISTOGRAMS = {
    "production_hist": SCORE_LAYOUT,
    "candidate_hist": SCORE_LAYOUT,
    "abs_hist": ABS_DIFF_LAYOUT,
}
_COUNTERS = (
    "requests", "compared", "rows", "candidate_outcomes", "production_outcomes", "label_rows",
    "agree", "flips", "feedback_rows", "production_correct", "candidate_correct",
)  # fmt: skip
_MERGEABLE = (
    "diff", "abs_diff", "abs_sketch", "production_hist", "candidate_hist", "abs_hist",
    "reservoir", "production_latency", "candidate_latency", "production_cpu_ms",
    "candidate_cpu_ms", "production_rss_mb", "candidate_rss_mb", "candidate_threads",
    "candidate_children", "production_threads", "production_children",
)  # fmt: skip
