"""The input features of a request, for input drift and slices (pure, no I/O).

Remote models do not tell shadowproxy their input signature, so features are read by
position: ``compare.features`` names the columns of the request's feature matrix (the v2
request's first input, the v1 instances, or the json protocol's configured fields). A body
that does not give such a matrix contributes no input figures; it is still compared.

Numeric columns come out as float64 (NaN where a value is missing; text in a numeric
column leaves the whole body out, as a decoder would refuse it). Categorical columns, the
ones the reference counts by category, come out as object arrays of ``str`` with ``None``
where a value is missing, so they can be matched against the reference's category values
(read from CSV text, hence strings).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import orjson

from shadowproxy.errors import PayloadError
from shadowproxy.protocols import JsonProtocol, PayloadProtocol, V1Protocol, V2Protocol


def feature_rows(
    protocol: PayloadProtocol,
    body: bytes,
    features: Sequence[str],
    categorical: Collection[str] = (),
) -> dict[str, np.ndarray] | None:
    """Column per feature name, or None when the body holds no feature matrix."""
    if not features:
        return None
    width = len(features)
    try:
        flat = _flatten(_rows(protocol, body))
        if flat is None or not flat or len(flat) % width:
            return None
        if not categorical:
            # All numeric: one C-level conversion of the whole matrix.
            numeric = np.asarray(flat, dtype=np.float64).reshape(-1, width)
            return {name: numeric[:, i] for i, name in enumerate(features)}
        values = np.empty(len(flat), dtype=object)
        values[:] = flat
        matrix = values.reshape(-1, width)
        return {
            name: _category_column(matrix[:, i])
            if name in categorical
            else np.asarray(matrix[:, i].tolist(), dtype=np.float64)
            for i, name in enumerate(features)
        }
    except (PayloadError, ValueError, TypeError, KeyError, IndexError, orjson.JSONDecodeError):
        return None


def _rows(protocol: PayloadProtocol, body: bytes) -> Any:
    """The request's feature rows, exactly as the JSON gave them."""
    if isinstance(protocol, JsonProtocol):
        return protocol.feature_table(body)
    value = orjson.loads(body)
    if isinstance(protocol, V2Protocol):
        return value["inputs"][0]["data"]
    if isinstance(protocol, V1Protocol):
        return value["instances"]
    return None


def _flatten(rows: Any) -> list[Any] | None:
    """Row-major values of a flat list or a list of rows of scalars; None otherwise.

    Built element-wise: ``np.asarray`` on ragged or nested JSON would guess a shape.
    """
    if not isinstance(rows, list | tuple):
        return None
    if not any(isinstance(row, list | tuple) for row in rows):
        return list(rows)
    if not all(isinstance(row, list | tuple) for row in rows):
        return None
    flat = [value for row in rows for value in row]
    if any(isinstance(value, list | tuple | dict) for value in flat):
        return None
    return flat


def _category_column(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape[0], dtype=object)
    for i, value in enumerate(values):
        out[i] = None if value is None else _category_text(value)
    return out


def _category_text(value: object) -> str:
    # The reference reads categories from CSV text: booleans and whole numbers are matched
    # the way they would have been written there.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
