"""Which part of a response holds the scores and which the labels.

The rules, the same for every protocol:

1. A selector that is set (``compare.outputs.score`` / ``.label``) must name something that
   exists: an output tensor (v2), or a dotted path inside each response row (v1, json).
   Otherwise the response is refused with ``bad_selector``.
2. An unset selector takes the first of :data:`SCORE_NAMES` / :data:`LABEL_NAMES` that exists.
3. When both selectors are unset and neither default name exists, a response with a single
   output (one v2 tensor, plain v1/json predictions, or row objects with one key) is read by
   its type. v2: a floating-point datatype is scores, any other datatype labels. v1/json: one
   integer, boolean or string per row (bare, or in a one-item list) is labels; anything else
   (floats, lists of numbers) is scores.

A response where neither scores nor labels are found is refused with ``bad_selector``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shadowproxy.config.model import Outputs
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import fields
from shadowproxy.protocols.arrays import labels_array, scores_array
from shadowproxy.protocols.base import Comparable

#: Names an unset score selector looks for, in order.
SCORE_NAMES: tuple[str, ...] = ("probabilities", "scores", "score")
#: Names an unset label selector looks for, in order.
LABEL_NAMES: tuple[str, ...] = ("label", "labels")


def pick(has: Callable[[str], bool], outputs: Outputs, where: str) -> tuple[str | None, str | None]:
    """The score and label selectors to use, per rules 1 and 2.

    Parameters
    ----------
    has : callable
        Whether a name (or path) exists in the response.
    outputs : Outputs
        The configured selectors.
    where : str
        Names the response part in messages.

    Returns
    -------
    tuple
        ``(score, label)``, each a name or None.

    Raises
    ------
    PayloadError
        ``bad_selector`` when a set selector names nothing.
    """
    chosen: list[str | None] = []
    for selector, defaults, what in (
        (outputs.score, SCORE_NAMES, "score"),
        (outputs.label, LABEL_NAMES, "label"),
    ):
        if selector:
            if not has(selector):
                raise PayloadError(
                    f"{where}: compare.outputs.{what} {selector!r} is not in the response",
                    "bad_selector",
                )
            chosen.append(selector)
        else:
            chosen.append(next((name for name in defaults if has(name)), None))
    return chosen[0], chosen[1]


def comparable(scores: np.ndarray | None, labels: np.ndarray | None, where: str) -> Comparable:
    """Check and shape scores (``[rows, k]``) and labels (``[rows]``) into a Comparable.

    Raises
    ------
    PayloadError
        ``bad_selector`` when both are None, ``empty_batch`` for no rows, ``bad_shape`` for
        scalars, empty score rows or labels with more than one value per row,
        ``bad_response`` when the two disagree on the row count.
    """
    if scores is None and labels is None:
        raise PayloadError(
            f"{where}: no scores or labels found (looked for {'/'.join(SCORE_NAMES)} and "
            f"{'/'.join(LABEL_NAMES)}); set compare.outputs.score or compare.outputs.label",
            "bad_selector",
        )
    if scores is not None:
        scores = _rows_first(scores, where, "scores")
        scores = scores.reshape(scores.shape[0], -1)
        if scores.shape[1] == 0:
            raise PayloadError(f"{where}: scores have no values per row", "bad_shape")
    if labels is not None:
        labels = _rows_first(labels, where, "labels")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        elif labels.ndim != 1:
            raise PayloadError(
                f"{where}: labels have shape {list(labels.shape)}, not one per row", "bad_shape"
            )
    if scores is not None and labels is not None and len(scores) != len(labels):
        raise PayloadError(
            f"{where}: {len(scores)} rows of scores but {len(labels)} labels", "bad_response"
        )
    rows = len(scores) if scores is not None else len(labels)  # type: ignore[arg-type]
    return Comparable(scores=scores, labels=labels, rows=rows)


def _rows_first(array: np.ndarray, where: str, what: str) -> np.ndarray:
    if array.ndim == 0:
        raise PayloadError(f"{where}: {what} are a single value, not rows", "bad_shape")
    if array.shape[0] == 0:
        raise PayloadError(f"{where}: the response has no rows", "empty_batch")
    return array


def from_rows(rows: Any, outputs: Outputs, where: str) -> Comparable:
    """Scores and labels from a list of response rows (v1 predictions, json rows).

    Parameters
    ----------
    rows : Any
        The parsed rows: objects, or plain values (numbers, strings, lists).
    outputs : Outputs
        Selectors, dotted paths inside each row object.
    where : str
        Names the rows in messages.

    Returns
    -------
    Comparable

    Raises
    ------
    PayloadError
        ``bad_response`` when ``rows`` is not a list or mixes objects with other values,
        ``bad_selector`` when a set selector does not apply, or a conversion reason.
    """
    if not isinstance(rows, list):
        raise PayloadError(
            f"{where}: expected a list of rows, got {type(rows).__name__}", "bad_response"
        )
    if not rows:
        raise PayloadError(f"{where}: the response has no rows", "empty_batch")
    objects = sum(isinstance(row, dict) for row in rows)
    if objects == 0:
        if outputs.score or outputs.label:
            raise PayloadError(
                f"{where}: rows are plain values, so compare.outputs selectors cannot apply",
                "bad_selector",
            )
        return _plain(rows, where)
    if objects != len(rows):
        raise PayloadError(f"{where}: rows mix objects and other values", "bad_response")
    first = rows[0]
    score, label = pick(lambda path: _has_path(first, path), outputs, f"{where}[0]")
    if score is None and label is None and not (outputs.score or outputs.label) and len(first) == 1:
        (key,) = first
        return _plain(_column(rows, key, where), f"{where}[*].{key}")
    scores = (
        None if score is None else scores_array(_column(rows, score, where), f"{where}[*].{score}")
    )
    labels = (
        None if label is None else labels_array(_column(rows, label, where), f"{where}[*].{label}")
    )
    return comparable(scores, labels, where)


def _plain(values: list[Any], where: str) -> Comparable:
    """Rule 3: one integer, boolean or string per row (bare or in a one-item list) is a label;
    anything else is scores."""
    probe = np.asarray(values, dtype=object)
    one_per_row = probe.ndim == 1 or (probe.ndim == 2 and probe.shape[1] == 1)
    leaf_types = {type(leaf) for leaf in probe.reshape(-1)} if one_per_row else set()
    if leaf_types and leaf_types <= {int, bool, str}:
        return comparable(None, labels_array(values, where), where)
    return comparable(scores_array(values, where), None, where)


def _has_path(row: dict[str, Any], path: str) -> bool:
    try:
        fields.get_path(row, path)
    except KeyError:
        return False
    return True


def _column(rows: Sequence[dict[str, Any]], path: str, where: str) -> list[Any]:
    column = []
    for index, row in enumerate(rows):
        try:
            column.append(fields.get_path(row, path))
        except KeyError:
            raise PayloadError(f"{where}[{index}]: no {path!r}", "bad_selector") from None
    return column
