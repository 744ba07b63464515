"""From pair records to comparable rows (pure, no I/O).

A pair record holds raw bodies. For the comparator each mirrored target's answer becomes,
per row, a score and a label beside production's, plus the exchange's latency and cost.
Only what can be compared is kept: when either side failed, or their bodies do not parse
or disagree on the number of rows, the pair counts towards the outcome rates but not
towards divergence.

The score compared is one number per row: the probability of class 1 for a two-column
score (binary classifiers), the value itself for a single column, and for more columns the
probability each side gives to production's top class, so both sides are read at the same
index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from shadowproxy.config.model import Outputs
from shadowproxy.errors import PayloadError
from shadowproxy.pairing.record import Exchange
from shadowproxy.protocols import Comparable, PayloadProtocol
from shadowproxy.protocols.base import OneRow


@dataclass(frozen=True, slots=True)
class Compared:
    """One target's answers to one request, row by row, beside production's."""

    production_scores: np.ndarray | None  # (rows,) float64
    candidate_scores: np.ndarray | None
    production_labels: np.ndarray | None  # (rows,) as strings, so any label type compares
    candidate_labels: np.ndarray | None

    @property
    def rows(self) -> int:
        for array in (self.production_scores, self.production_labels):
            if array is not None:
                return int(array.shape[0])
        return 0


def extract(protocol: PayloadProtocol, outputs: Outputs, exchange: Exchange) -> Comparable | None:
    """The comparable outputs of an answered exchange; None when it has none."""
    if exchange.outcome != "ok" or not exchange.body or exchange.body_truncated:
        return None
    try:
        return protocol.extract(exchange.body, outputs)
    except PayloadError:
        return None


class RowCompared(NamedTuple):
    """Two one-row answers lined up: :class:`Compared` for a single row, in plain values
    (a named tuple, like :class:`OneRow`, because one is built per pair)."""

    production_score: float | None  # both scores are set, or neither
    candidate_score: float | None
    production_label: str | None  # both labels are set, or neither
    candidate_label: str | None


def read(
    protocol: PayloadProtocol, outputs: Outputs, exchange: Exchange
) -> OneRow | Comparable | None:
    """Like :func:`extract`, but a plain one-row answer comes back as a :class:`OneRow`."""
    if exchange.outcome != "ok" or not exchange.body or exchange.body_truncated:
        return None
    row = protocol.extract_row(exchange.body, outputs)
    if row is not None:
        return row
    try:
        return protocol.extract(exchange.body, outputs)
    except PayloadError:
        return None


def as_comparable(answer: OneRow | Comparable) -> Comparable:
    return answer.comparable() if isinstance(answer, OneRow) else answer


def compare_rows(production: OneRow, candidate: OneRow) -> RowCompared | None:
    """:func:`compare` for two one-row answers, by the same rules; None when they cannot
    be compared."""
    p_score = c_score = None
    p, c = production.scores, candidate.scores
    if p is not None and c is not None and len(p) == len(c):
        width = len(p)
        # The column score_vector reads: class 1, the only one, or production's top class
        # (the first maximum, as numpy.argmax).
        at = 1 if width == 2 else 0 if width == 1 else p.index(max(p))
        p_score, c_score = p[at], c[at]
    p_label = c_label = None
    if production.label is not None and candidate.label is not None:
        p_label, c_label = production.label, candidate.label
    if p_score is None and p_label is None:
        return None
    return RowCompared(p_score, c_score, p_label, c_label)


def score_vector(production: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce per-row score vectors to one comparable score per row (see module docs)."""
    if production.shape[1] == 2 and candidate.shape[1] == 2:
        return production[:, 1], candidate[:, 1]
    if production.shape[1] == 1 and candidate.shape[1] == 1:
        return production[:, 0], candidate[:, 0]
    if production.shape[1] == candidate.shape[1]:
        top = np.argmax(production, axis=1)
        rows = np.arange(production.shape[0])
        return production[rows, top], candidate[rows, top]
    raise ValueError(f"score widths differ: {production.shape[1]} and {candidate.shape[1]}")


def compare(production: Comparable, candidate: Comparable) -> Compared | None:
    """Line two answers up row by row; None when they cannot be compared."""
    if production.rows != candidate.rows or production.rows == 0:
        return None
    p_scores = c_scores = None
    if production.scores is not None and candidate.scores is not None:
        try:
            p_scores, c_scores = score_vector(production.scores, candidate.scores)
        except ValueError:
            p_scores = c_scores = None
    p_labels = c_labels = None
    if production.labels is not None and candidate.labels is not None:
        p_labels = production.labels.astype(str)
        c_labels = candidate.labels.astype(str)
    if p_scores is None and p_labels is None:
        return None
    return Compared(p_scores, c_scores, p_labels, c_labels)
