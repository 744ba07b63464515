"""The Open Inference Protocol (KServe V2) REST bodies.

Request::

    {"id"?: str, "parameters"?: {...},
     "inputs": [{"name", "shape", "datatype", "data", "parameters"?}, ...],
     "outputs"?: [{"name", "parameters"?}, ...]}

Response::

    {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}

``data`` is the row-major flattening of the tensor; nested lists are accepted when they hold
exactly ``prod(shape)`` values (they are flattened in row-major order). ``BYTES`` values are
JSON strings. The first dimension of every input is the batch (rows) and must agree across
inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import arrays, jsonio, selection
from shadowproxy.protocols.base import Comparable, Decoded, OneRow, PayloadProtocol
from shadowproxy.tensors import DATATYPES, TensorSpec

_PLANS_KEPT = 64  # output-name layouts remembered by the fast path


class V2Protocol(PayloadProtocol):
    """Open Inference Protocol REST (``protocol: v2``)."""

    name = "v2"

    def __init__(self, payload: Payload) -> None:
        super().__init__(payload)
        # (output names in order, selectors) -> (score index, label index) or None when
        # the generic path must decide; see extract_row.
        self._plans: dict[tuple[Any, ...], tuple[int | None, int | None] | None] = {}

    def decode_request(self, body: bytes, inputs: Sequence[TensorSpec]) -> Decoded:
        value = self._parse_object(body)
        request_id = value.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise PayloadError("id: expected a string", "bad_body")
        parameters = value.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise PayloadError("parameters: expected an object", "bad_body")
        entries = value.get("inputs")
        if not isinstance(entries, list):
            raise PayloadError("inputs: expected a list of input tensors", "bad_body")
        specs = {spec.name: spec for spec in inputs}
        bools_seen = b"true" in body or b"false" in body
        decoded: dict[str, np.ndarray] = {}
        rows: int | None = None
        for index, entry in enumerate(entries):
            where = f"inputs[{index}]"
            name, shape, datatype = _header(entry, where)
            spec = specs.get(name)
            if spec is None:
                raise PayloadError(
                    f"{where}.name: {name!r} is not an input of the model "
                    f"(inputs: {', '.join(specs) or 'none'})",
                    "unknown_input",
                )
            if name in decoded:
                raise PayloadError(f"{where}.name: {name!r} appears twice", "duplicate_input")
            if datatype != spec.datatype:
                raise PayloadError(
                    f"{where}.datatype: model input {name!r} is {spec.datatype}, "
                    f"request says {datatype}",
                    "bad_dtype",
                )
            arrays.check_shape(shape, spec, f"{where}.shape")
            if rows is None:
                rows = shape[0]
                arrays.check_rows(rows, self.payload.max_rows, f"{where}.shape")
            elif shape[0] != rows:
                raise PayloadError(
                    f"{where}.shape: {shape[0]} rows, but inputs[0] has {rows}", "bad_shape"
                )
            data = arrays.to_array(
                entry.get("data"),
                datatype,
                where=f"{where}.data",
                allow_nonfinite=self.payload.nonfinite == "allow",
                bools_seen=bools_seen,
            )
            decoded[name] = _fit(data, shape, where)
        missing = [spec.name for spec in inputs if spec.name not in decoded]
        if missing:
            raise PayloadError(
                f"inputs: missing model input {', '.join(repr(n) for n in missing)}",
                "missing_input",
            )
        if rows is None:
            raise PayloadError("inputs: the request has no inputs", "empty_batch")
        return Decoded(
            arrays=decoded,
            rows=rows,
            id=request_id,
            outputs=_requested_outputs(value.get("outputs")),
        )

    def encode_response(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        model_name: str,
        model_version: str,
        request_id: str | None,
        rows: int | None = None,
    ) -> bytes:
        tensors = []
        for name, array in outputs.items():
            datatype, data = arrays.jsonable(np.asarray(array))
            flat = data.reshape(-1) if isinstance(data, np.ndarray) else _flatten(data)
            tensors.append(
                {"name": name, "datatype": datatype, "shape": list(np.shape(array)), "data": flat}
            )
        body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
        if request_id is not None:
            body["id"] = request_id
        body["outputs"] = tensors
        try:
            return jsonio.dumps(body)
        except TypeError as exc:  # orjson.JSONEncodeError derives from TypeError
            raise PayloadError(f"outputs cannot be written as JSON: {exc}", "bad_output") from exc

    def extract(self, body: bytes, outputs: Outputs) -> Comparable:
        value = self._parse(body, allow_nonfinite=True)
        if not isinstance(value, dict):
            raise PayloadError(
                f"response: expected an object, got {arrays.json_type(value)}", "bad_response"
            )
        entries = value.get("outputs")
        if not isinstance(entries, list):
            error = value.get("error")
            detail = f" (error: {error})" if isinstance(error, str) else ""
            raise PayloadError(f"response: no outputs list{detail}", "bad_response")
        tensors: dict[str, tuple[int, dict[str, Any]]] = {}
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise PayloadError(
                    f"outputs[{index}]: expected an object with a name", "bad_response"
                )
            tensors.setdefault(entry["name"], (index, entry))
        score, label = selection.pick(tensors.__contains__, outputs, "outputs")
        if score is None and label is None and len(tensors) == 1:
            # Rule 3: a single output is read by its datatype.
            (only,) = tensors
            datatype = tensors[only][1].get("datatype")
            if not isinstance(datatype, str) or datatype not in DATATYPES:
                raise PayloadError(
                    f"outputs[0].datatype: {datatype!r} is not an OIP datatype", "bad_response"
                )
            if datatype.startswith("FP"):
                score = only
            else:
                label = only
        scores = None if score is None else _output(tensors[score], arrays.scores_array)
        labels = None if label is None else _output(tensors[label], arrays.labels_array)
        return selection.comparable(scores, labels, "outputs")

    def extract_row(self, body: bytes, outputs: Outputs) -> OneRow | None:
        # Only what ``extract`` would read the same way is taken here; anything it would
        # convert, reshape or refuse goes back to it (None).
        value = self._parse_fast(body)
        entries = value.get("outputs") if type(value) is dict else None
        if type(entries) is not list:
            return None
        names = tuple([e.get("name") if type(e) is dict else None for e in entries])
        key = (names, outputs.score, outputs.label)
        try:
            plan = self._plans[key]
        except TypeError:  # a name that is a list or an object
            return None
        except KeyError:
            plan = self._plan(names, outputs)
            if len(self._plans) < _PLANS_KEPT:
                self._plans[key] = plan
        if plan is None:
            return None
        score_at, label_at = plan
        scores = label = None
        if score_at is not None:
            scores = _one_row_scores(entries[score_at])
            if scores is None:
                return None
        if label_at is not None:
            label = _one_row_label(entries[label_at])
            if label is None:
                return None
        return OneRow(scores, label)

    def _plan(
        self, names: tuple[str | None, ...], outputs: Outputs
    ) -> tuple[int | None, int | None] | None:
        """Where the score and label tensors sit, by the rules ``extract`` applies."""
        if any(type(name) is not str for name in names):
            return None
        first: dict[str, int] = {}
        for index, name in enumerate(names):
            first.setdefault(name, index)  # type: ignore[arg-type]
        try:
            score, label = selection.pick(first.__contains__, outputs, "outputs")
        except PayloadError:
            return None
        if score is None and label is None:
            return None  # rule 3 reads the datatype: left to extract
        return (
            None if score is None else first[score],
            None if label is None else first[label],
        )


def _one_row_scores(entry: dict[str, Any]) -> list[float] | None:
    """A tensor of one row of plain numbers, as floats; None for anything else."""
    data = entry.get("data")
    shape = entry.get("shape")
    if type(data) is not list or not data or type(shape) is not list or not shape:
        return None
    if len(shape) == 2 and type(shape[0]) is int and type(shape[1]) is int:
        if shape[0] != 1 or shape[1] != len(data):  # the usual [1, k], checked at once
            return None
    elif shape[0] != 1 or not all(type(dim) is int and dim >= 0 for dim in shape):
        return None
    elif math.prod(shape) != len(data):
        return None
    return selection.row_scores(data)


def _one_row_label(entry: dict[str, Any]) -> str | None:
    """The text of a one-row label tensor (shape ``[1]`` or ``[1, 1]``); None otherwise."""
    data = entry.get("data")
    shape = entry.get("shape")
    if type(data) is not list or len(data) != 1 or shape not in ([1], [1, 1]):
        return None
    if type(shape[0]) is not int or (len(shape) == 2 and type(shape[1]) is not int):
        return None  # true == 1 in Python, but not a dimension
    return selection.row_label(data[0])


def _header(entry: object, where: str) -> tuple[str, list[int], str]:
    """The name, shape and datatype of one request input, checked."""
    if not isinstance(entry, dict):
        raise PayloadError(
            f"{where}: expected an object, got {arrays.json_type(entry)}", "bad_body"
        )
    name = entry.get("name")
    if not isinstance(name, str):
        raise PayloadError(f"{where}.name: expected a string", "bad_body")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise PayloadError(
            f"{where}.shape: expected a list of non-negative integers, got {shape!r:.60}",
            "bad_shape",
        )
    if not shape:
        raise PayloadError(f"{where}.shape: a scalar has no batch dimension", "bad_shape")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise PayloadError(
            f"{where}.datatype: {datatype!r:.40} is not an OIP datatype", "bad_dtype"
        )
    if "data" not in entry:
        raise PayloadError(f"{where}.data: missing", "bad_body")
    parameters = entry.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise PayloadError(f"{where}.parameters: expected an object", "bad_body")
    return name, shape, datatype


def _fit(data: np.ndarray, shape: list[int], where: str) -> np.ndarray:
    """Reshape flat (or differently nested) data to the declared shape."""
    if list(data.shape) == shape:
        return data
    expected = math.prod(shape)
    if data.size != expected:
        raise PayloadError(
            f"{where}.shape: {shape} holds {expected} values, data has {data.size}", "bad_shape"
        )
    return data.reshape(shape)


def _requested_outputs(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PayloadError('outputs: expected a list of {"name": ...} objects', "bad_body")
    names = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PayloadError(f"outputs[{index}]: expected an object with a name", "bad_body")
        names.append(entry["name"])
    return tuple(names)


def _flatten(nested: Any) -> list[Any]:
    """Row-major flattening of nested lists (``BYTES`` outputs)."""
    if not isinstance(nested, list):
        return [nested]
    flat: list[Any] = []
    stack = [iter(nested)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _output(found: tuple[int, dict[str, Any]], convert: Any) -> np.ndarray:
    """One response tensor, converted and reshaped by its ``shape``."""
    index, entry = found
    where = f"outputs[{index}] ({entry['name']!r})"
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise PayloadError(
            f"{where}.shape: expected a list of non-negative integers", "bad_response"
        )
    if "data" not in entry:
        raise PayloadError(f"{where}.data: missing", "bad_response")
    data = convert(entry["data"], f"{where}.data")
    return _fit(data, shape, where)
