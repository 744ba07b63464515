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
from shadowproxy.protocols.base import Comparable, OneRow

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


# -- the comparator's fast path: one row, plain values -------------------------------------

# Integers that float64 holds exactly: float() of one equals numpy's conversion.
EXACT_INT = 2**53
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def one_row(rows: Any, outputs: Outputs) -> OneRow | None:
    """:func:`from_rows` for a list of exactly one row, read into plain values.

    None whenever ``from_rows`` would convert, reshape or refuse something (a boolean, a
    null, nested lists, several rows, a missing selector): the caller then uses
    ``from_rows``, which gives the result or the error.
    """
    if type(rows) is not list or len(rows) != 1:
        return None
    row = rows[0]
    if type(row) is not dict:
        return None if outputs.score or outputs.label else plain_row(row)
    try:
        score, label = pick(lambda path: _has_path(row, path), outputs, "")
    except PayloadError:
        return None
    if score is None and label is None:
        if outputs.score or outputs.label or len(row) != 1:
            return None
        (only,) = row.values()
        return plain_row(only)  # rule 3 on the row's single value
    scores = None if score is None else row_scores(fields.get_path(row, score))
    text = None if label is None else row_label(fields.get_path(row, label))
    if (score is not None and scores is None) or (label is not None and text is None):
        return None
    return OneRow(scores, text)


def plain_row(value: Any) -> OneRow | None:
    """Rule 3 for one plain row value: an integer or a string (bare, or alone in a list) is
    a label, numbers are scores; None for anything ``_plain`` would treat otherwise."""
    if type(value) is list and len(value) == 1:
        value = value[0]  # [x] reads as x, for labels and scores alike
        if type(value) is list:
            return None
    if type(value) is list:
        scores = row_scores(value)
        return None if scores is None else OneRow(scores, None)
    if type(value) is float:
        return OneRow([value], None)
    text = row_label(value)
    return None if text is None else OneRow(None, text)


def row_scores(value: Any) -> list[float] | None:
    """One row's scores: a number or a flat, non-empty list of them, as floats."""
    numbers = value if type(value) is list else [value]
    if not numbers:
        return None
    for number in numbers:
        if type(number) is not float:
            break
    else:
        return numbers  # floats already (parsed for this call, so the caller's to keep)
    scores = []
    for number in numbers:
        kind = type(number)
        if kind is float:
            scores.append(number)
        elif kind is int and -EXACT_INT <= number <= EXACT_INT:
            scores.append(float(number))
        else:
            return None
    return scores


def row_label(value: Any) -> str | None:
    """One row's label as text: an int64 integer or a string; None for anything else."""
    if type(value) is list and len(value) == 1:
        value = value[0]
    if type(value) is int:
        return str(value) if INT64_MIN <= value <= INT64_MAX else None
    if type(value) is str and "\x00" not in value:  # numpy text drops trailing NULs
        return value
    return None
