"""The KServe V1 (TensorFlow Serving style) REST bodies.

Request, row form::

    {"instances": [ROW, ...]}

where ``ROW`` is the input value for one row (a feature list, a scalar, nested lists) of a
single-input model, or an object ``{input_name: value}`` for any model. Request, columnar
form::

    {"inputs": [ROW, ...]}                        single-input model
    {"inputs": {input_name: [ROW, ...], ...}}     one column per input

Response::

    {"predictions": [PREDICTION, ...]}

one prediction per row: the single output's row value, or ``{output_name: row_value}`` when
the model has several outputs. Errors are ``{"error": message}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shadowproxy.config.model import Outputs
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import arrays, jsonio, selection
from shadowproxy.protocols.base import Comparable, Decoded, OneRow, PayloadProtocol
from shadowproxy.tensors import TensorSpec


class V1Protocol(PayloadProtocol):
    """KServe V1 REST (``protocol: v1``)."""

    name = "v1"

    def decode_request(self, body: bytes, inputs: Sequence[TensorSpec]) -> Decoded:
        value = self._parse_object(body)
        if ("instances" in value) == ("inputs" in value):
            raise PayloadError('body: expected exactly one of "instances" or "inputs"', "bad_body")
        if "instances" in value:
            columns, rows = self._instances(value["instances"], inputs)
        else:
            columns, rows = self._columns(value["inputs"], inputs)
        bools_seen = b"true" in body or b"false" in body
        allow_nonfinite = self.payload.nonfinite == "allow"
        decoded = {}
        for spec in inputs:
            where, column = columns[spec.name]
            array = arrays.to_array(
                column,
                spec.datatype,
                where=where,
                allow_nonfinite=allow_nonfinite,
                bools_seen=bools_seen,
            )
            if array.ndim == 0 or array.shape[0] != rows:
                raise PayloadError(f"{where}: expected {rows} rows", "bad_shape")
            arrays.check_shape(array.shape, spec, where)
            decoded[spec.name] = array
        return Decoded(arrays=decoded, rows=rows)

    def _instances(
        self, instances: object, inputs: Sequence[TensorSpec]
    ) -> tuple[dict[str, tuple[str, Any]], int]:
        """One ``(where, column)`` per input from the row form."""
        if not isinstance(instances, list):
            raise PayloadError("instances: expected a list of rows", "bad_body")
        arrays.check_rows(len(instances), self.payload.max_rows, "instances")
        named = sum(isinstance(row, dict) for row in instances)
        if named == 0:
            if len(inputs) != 1:
                raise PayloadError(
                    f"instances: the model has {len(inputs)} inputs, so each instance must be "
                    "an object keyed by input name",
                    "bad_body",
                )
            return {inputs[0].name: ("instances", instances)}, len(instances)
        if named != len(instances):
            raise PayloadError("instances: rows mix objects and other values", "bad_body")
        names = [spec.name for spec in inputs]
        expected = set(names)
        for index, row in enumerate(instances):
            if row.keys() != expected:
                _check_names(row.keys(), names, f"instances[{index}]")
        columns = {
            name: (f"instances[*].{name}", [row[name] for row in instances]) for name in names
        }
        return columns, len(instances)

    def _columns(
        self, value: object, inputs: Sequence[TensorSpec]
    ) -> tuple[dict[str, tuple[str, Any]], int]:
        """One ``(where, column)`` per input from the columnar form."""
        if isinstance(value, list):
            if len(inputs) != 1:
                raise PayloadError(
                    f"inputs: the model has {len(inputs)} inputs, so inputs must be an object "
                    "keyed by input name",
                    "bad_body",
                )
            arrays.check_rows(len(value), self.payload.max_rows, "inputs")
            return {inputs[0].name: ("inputs", value)}, len(value)
        if not isinstance(value, dict):
            raise PayloadError(
                f"inputs: expected a list or an object, got {arrays.json_type(value)}", "bad_body"
            )
        names = [spec.name for spec in inputs]
        _check_names(value.keys(), names, "inputs")
        rows = None
        for name in names:
            column = value[name]
            if not isinstance(column, list):
                raise PayloadError(f"inputs.{name}: expected a list of rows", "bad_body")
            if rows is None:
                rows = len(column)
                arrays.check_rows(rows, self.payload.max_rows, f"inputs.{name}")
            elif len(column) != rows:
                raise PayloadError(
                    f"inputs.{name}: {len(column)} rows, but inputs.{names[0]} has {rows}",
                    "bad_shape",
                )
        if rows is None:
            raise PayloadError("inputs: the request has no inputs", "empty_batch")
        return {name: (f"inputs.{name}", value[name]) for name in names}, rows

    def encode_response(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        model_name: str,
        model_version: str,
        request_id: str | None,
        rows: int | None = None,
    ) -> bytes:
        values = {}
        for name, array in outputs.items():
            array = np.asarray(array)
            if array.ndim == 0 or (rows is not None and array.shape[0] != rows):
                raise PayloadError(
                    f"output {name!r} has shape {list(array.shape)}, not {rows} rows",
                    "bad_output",
                )
            rows = array.shape[0]  # the request's rows when given, else the first output's
            values[name] = arrays.jsonable(array)[1]
        predictions: Any
        if len(values) == 1:
            (predictions,) = values.values()
        else:
            predictions = [
                {name: value[row] for name, value in values.items()} for row in range(rows or 0)
            ]
        try:
            return jsonio.dumps({"predictions": predictions})
        except TypeError as exc:  # orjson.JSONEncodeError derives from TypeError
            raise PayloadError(f"outputs cannot be written as JSON: {exc}", "bad_output") from exc

    def extract(self, body: bytes, outputs: Outputs) -> Comparable:
        value = self._parse(body, allow_nonfinite=True)
        if not isinstance(value, dict) or "predictions" not in value:
            error = value.get("error") if isinstance(value, dict) else None
            detail = f" (error: {error})" if isinstance(error, str) else ""
            raise PayloadError(f"response: no predictions{detail}", "bad_response")
        return selection.from_rows(value["predictions"], outputs, "predictions")

    def extract_row(self, body: bytes, outputs: Outputs) -> OneRow | None:
        value = self._parse_fast(body)
        if type(value) is not dict or "predictions" not in value:
            return None
        return selection.one_row(value["predictions"], outputs)


def _check_names(given: Any, names: Sequence[str], where: str) -> None:
    """Raise ``unknown_input`` or ``missing_input`` unless ``given`` are exactly ``names``."""
    unknown = [key for key in given if key not in names]
    if unknown:
        raise PayloadError(
            f"{where}: {unknown[0]!r} is not an input of the model (inputs: {', '.join(names)})",
            "unknown_input",
        )
    missing = [name for name in names if name not in given]
    if missing:
        raise PayloadError(f"{where}: missing model input {missing[0]!r}", "missing_input")
