"""Custom JSON bodies (``protocol: json``), mapped by configuration.

Requests: the rows are the list at ``payload.rows`` (a dotted path; empty means the body is
one row object or a list of them; an object at the path is one row). Each row is an object;
the fields named by ``compare.features``, in that order, become the columns of one
``[rows, len(features)]`` matrix for the model's single input.

Responses: the rows are at ``payload.response_rows`` (empty: the body itself, one object or a
list). Scores and labels are the dotted paths ``compare.outputs.score`` / ``.label`` inside
each row (see :mod:`shadowproxy.protocols.selection` for the defaults).

A local model's outputs are written as a list of row objects at ``payload.response_rows``,
the score at ``compare.outputs.score`` (default ``score``) and the label at
``compare.outputs.label`` (default ``label``). The score output is the one named in
:data:`~shadowproxy.protocols.selection.SCORE_NAMES`, else the first floating-point output;
the label output is the one named in
:data:`~shadowproxy.protocols.selection.LABEL_NAMES`, else the first other output. Further
outputs are not written.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import arrays, fields, jsonio, selection
from shadowproxy.protocols.base import Comparable, Decoded, OneRow, PayloadProtocol
from shadowproxy.tensors import TensorSpec

#: Paths written by :meth:`JsonProtocol.encode_response` when the selectors are unset.
DEFAULT_SCORE_PATH = "score"
DEFAULT_LABEL_PATH = "label"


class JsonProtocol(PayloadProtocol):
    """Custom JSON rows (``protocol: json``).

    Parameters
    ----------
    payload : Payload
        Limits and the request/response row paths.
    features : sequence of str
        Row fields (dotted paths) that form the model input's columns, in order.
    outputs : Outputs
        Where a local model's score and label are written in each response row.
    """

    name = "json"

    def __init__(
        self, payload: Payload, features: Sequence[str] = (), outputs: Outputs | None = None
    ) -> None:
        super().__init__(payload)
        self.features = tuple(features)
        self.outputs = outputs or Outputs()
        # itemgetter picks all columns of a row in one C call; dotted names need the walk.
        self._pick = (
            operator.itemgetter(*self.features)
            if self.features and not any("." in name for name in self.features)
            else None
        )

    def model_problem(self, inputs: Sequence[TensorSpec]) -> str | None:
        """The json protocol feeds one ``[rows, len(features)]`` input."""
        if len(inputs) != 1:
            names = ", ".join(repr(spec.name) for spec in inputs)
            return f"the json protocol feeds one model input; the model has {len(inputs)} ({names})"
        (spec,) = inputs
        width = len(self.features)
        if len(spec.shape) != 2:
            return (
                f"the json protocol feeds a [rows, features] input; the model's {spec.name!r} "
                f"has shape {list(spec.shape)}"
            )
        if spec.shape[1] not in (-1, width):
            return (
                f"compare.features names {width} columns; the model's {spec.name!r} takes "
                f"{spec.shape[1]} (shape {list(spec.shape)})"
            )
        return None

    def decode_request(self, body: bytes, inputs: Sequence[TensorSpec]) -> Decoded:
        if len(inputs) != 1:
            raise PayloadError(
                f"the json protocol feeds one model input; the model has {len(inputs)}",
                "bad_model",
            )
        if not self.features:
            raise PayloadError(
                "the json protocol needs compare.features to order the columns", "bad_model"
            )
        spec = inputs[0]
        where = self.payload.rows or "body"
        matrix = self.feature_table(body)
        allow_nonfinite = self.payload.nonfinite == "allow"
        bools_seen = b"true" in body or b"false" in body
        try:
            array = arrays.to_array(
                matrix,
                spec.datatype,
                where=where,
                allow_nonfinite=allow_nonfinite,
                bools_seen=bools_seen,
            )
        except PayloadError:
            self._blame_column(matrix, spec.datatype, where, allow_nonfinite)
            raise
        if array.ndim != 2:
            self._blame_column(matrix, spec.datatype, where, allow_nonfinite)
            raise PayloadError(f"{where}: each feature must be a single value", "bad_shape")
        arrays.check_shape(array.shape, spec, where)
        return Decoded(arrays={spec.name: array}, rows=len(matrix))

    def feature_table(self, body: bytes) -> list[Sequence[Any]]:
        """The request's rows as raw JSON values, one per feature, in feature order."""
        where = self.payload.rows or "body"
        rows = _rows(self._parse(body), self.payload.rows, where, "bad_body")
        arrays.check_rows(len(rows), self.payload.max_rows, where)
        return [self._row(row, index, where) for index, row in enumerate(rows)]

    def _blame_column(
        self, matrix: list[Sequence[Any]], datatype: str, where: str, allow_nonfinite: bool
    ) -> None:
        """Raise for the first feature column at fault (bad values, or not one per row)."""
        for column, feature in enumerate(self.features):
            name = f"{where}[*].{feature}"
            values = arrays.to_array(
                [row[column] for row in matrix],
                datatype,
                where=name,
                allow_nonfinite=allow_nonfinite,
            )
            if values.ndim != 1:
                raise PayloadError(f"{name}: each value must be a single value", "bad_shape")

    def _row(self, row: object, index: int, where: str) -> Sequence[Any]:
        if not isinstance(row, dict):
            raise PayloadError(
                f"{where}[{index}]: expected an object, got {arrays.json_type(row)}", "bad_body"
            )
        if self._pick is not None:
            try:
                picked = self._pick(row)
            except KeyError:
                pass
            else:
                return picked if len(self.features) > 1 else (picked,)
        values = []
        for feature in self.features:
            try:
                values.append(fields.get_path(row, feature))
            except KeyError:
                raise PayloadError(
                    f"{where}[{index}]: missing feature {feature!r}", "missing_input"
                ) from None
        return values

    def encode_response(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        model_name: str,
        model_version: str,
        request_id: str | None,
        rows: int | None = None,
    ) -> bytes:
        score, label = _pick_outputs({name: np.asarray(a) for name, a in outputs.items()})
        written = [
            (self.outputs.score or DEFAULT_SCORE_PATH, score),
            (self.outputs.label or DEFAULT_LABEL_PATH, label),
        ]
        columns = []
        for path, array in written:
            if array is None:
                continue
            if array.ndim == 0:
                raise PayloadError(f"output for {path!r} has no rows", "bad_output")
            columns.append((path, arrays.jsonable(array)[1]))
        row_counts = {len(value) for _, value in columns}
        if len(row_counts) > 1:
            raise PayloadError("score and label outputs disagree on the rows", "bad_output")
        answered = row_counts.pop() if row_counts else 0
        if rows is not None and columns and answered != rows:
            raise PayloadError(f"the model answered {answered} rows for {rows}", "bad_output")
        rows = answered
        records: list[dict[str, Any]] = [{} for _ in range(rows)]
        try:
            for path, value in columns:
                for record, cell in zip(records, value, strict=True):
                    fields.set_path(record, path, cell)
        except KeyError as exc:
            raise PayloadError(
                f"score path and label path overlap ({exc.args[0]!r})", "bad_output"
            ) from None
        body: Any = records
        if self.payload.response_rows:
            body = {}
            fields.set_path(body, self.payload.response_rows, records)
        try:
            return jsonio.dumps(body)
        except TypeError as exc:  # orjson.JSONEncodeError derives from TypeError
            raise PayloadError(f"outputs cannot be written as JSON: {exc}", "bad_output") from exc

    def extract(self, body: bytes, outputs: Outputs) -> Comparable:
        where = self.payload.response_rows or "body"
        value = self._parse(body, allow_nonfinite=True)
        rows = _rows(value, self.payload.response_rows, where, "bad_response")
        return selection.from_rows(rows, outputs, where)

    def extract_row(self, body: bytes, outputs: Outputs) -> OneRow | None:
        value = self._parse_fast(body)
        if value is None:
            return None
        try:
            found = fields.get_path(value, self.payload.response_rows)
        except KeyError:
            return None
        return selection.one_row([found] if type(found) is dict else found, outputs)


def _rows(value: Any, path: str, where: str, reason: str) -> list[Any]:
    """The list of rows at ``path``; an object there is one row."""
    try:
        found = fields.get_path(value, path)
    except KeyError:
        raise PayloadError(f"{where}: not found in the body", reason) from None
    if isinstance(found, dict):
        return [found]
    if not isinstance(found, list):
        raise PayloadError(
            f"{where}: expected a list of rows, got {arrays.json_type(found)}", reason
        )
    return found


def _pick_outputs(
    outputs: Mapping[str, np.ndarray],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The score and label outputs of a local model (see the module docstring)."""
    score = next((name for name in selection.SCORE_NAMES if name in outputs), None)
    label = next((name for name in selection.LABEL_NAMES if name in outputs), None)
    if score is None:
        score = next((n for n, a in outputs.items() if n != label and a.dtype.kind == "f"), None)
    if label is None:
        label = next((n for n in outputs if n != score), None)
    return (
        None if score is None else outputs[score],
        None if label is None else outputs[label],
    )
