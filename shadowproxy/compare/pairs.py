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

import numpy as np

from shadowproxy.config.model import Outputs
from shadowproxy.errors import PayloadError
from shadowproxy.pairing.record import Exchange
from shadowproxy.protocols import Comparable, PayloadProtocol


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
