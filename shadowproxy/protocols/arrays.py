"""Strict conversion between parsed JSON values and numpy arrays.

numpy's own conversion is lenient: it reads ``"1.5"`` and ``true`` as numbers and ``null`` as
NaN. Here the values are first converted with the dtype numpy infers, and that dtype says what
the JSON held; only then are they cast to the model's dtype. Python-level loops over elements
run only where nothing else can tell (strings for ``BYTES``, a ``true`` mixed into numbers,
rare object arrays).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from shadowproxy.errors import PayloadError
from shadowproxy.tensors import DATATYPES, TensorSpec, datatype_of_array

_JSON_TYPE = {
    type(None): "null",
    bool: "true/false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


# Largest finite value of each float type, by item size.
_FLOAT_MAX = {size: float(np.finfo(f"f{size}").max) for size in (2, 4, 8)}


def json_type(value: object) -> str:
    """How a parsed JSON value is named in messages."""
    return _JSON_TYPE.get(type(value), type(value).__name__)


def to_array(
    values: Any, datatype: str, *, where: str, allow_nonfinite: bool, bools_seen: bool = True
) -> np.ndarray:
    """Convert parsed JSON values (nested lists) to an array of an OIP ``datatype``.

    Parameters
    ----------
    values : Any
        A scalar or nested lists, as parsed.
    datatype : str
        The OIP datatype of the result (a key of :data:`shadowproxy.tensors.DATATYPES`).
    where : str
        Names the values in messages, e.g. ``inputs[0].data``.
    allow_nonfinite : bool
        Accept NaN and infinities (including float64 values beyond the range of a narrower
        float type).
    bools_seen : bool
        The body may hold ``true``/``false``; when false the check for booleans mixed into
        numbers is skipped.

    Returns
    -------
    numpy.ndarray
        The array, dtype from the table (``BYTES``: object array of ``str``), shape as nested.

    Raises
    ------
    PayloadError
        ``ragged``, ``bad_dtype``, ``int_overflow`` or ``nonfinite``.
    """
    if datatype == "BYTES":
        return _to_strings(values, where)
    dtype = DATATYPES[datatype][0]
    raw = _infer(values, where)
    if raw.size == 0:
        return np.empty(raw.shape, dtype=dtype)
    kind = raw.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise PayloadError(f"{where}: {datatype} takes true/false only", "bad_dtype")
        return raw
    if kind == "O":
        raw = _numbers_from_objects(raw, datatype, where)
        kind = raw.dtype.kind
    elif kind in "iuf" and bools_seen and _has_bool(values):
        raise PayloadError(f"{where}: true/false mixed into {datatype} numbers", "bad_dtype")
    if kind == "b":
        raise PayloadError(f"{where}: {datatype} takes numbers, got true/false", "bad_dtype")
    if kind not in "iuf":
        raise PayloadError(f"{where}: {datatype} takes numbers, got strings", "bad_dtype")
    if dtype.kind in "iu":
        return _to_integers(values, raw, dtype, datatype, where)
    if kind in "iu" and dtype.itemsize >= 4:
        return raw.astype(dtype, copy=False)  # any 64-bit integer is inside the float32 range
    # A peak inside the target's range proves every value finite and the cast free of
    # overflow: one reduction, no errstate, on the common path.
    peak = np.abs(raw, dtype=np.float64).max() if kind in "iu" else np.abs(raw).max()
    if peak <= _FLOAT_MAX[dtype.itemsize]:
        return raw.astype(dtype, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        out = raw.astype(dtype)
    if not allow_nonfinite and not np.isfinite(out).all():
        bad = raw.reshape(-1)[int(np.argmin(np.isfinite(out).reshape(-1)))].item()
        raise PayloadError(f"{where}: {bad!r} is not a finite {datatype} value", "nonfinite")
    return out


def _infer(values: Any, where: str) -> np.ndarray:
    """``np.asarray`` with the dtype numpy infers; its failures as PayloadError."""
    try:
        return np.asarray(values)
    except ValueError as exc:
        if "inhomogeneous" in str(exc):
            raise PayloadError(f"{where}: ragged nested lists", "ragged") from exc
        # numpy arrays have at most 64 dimensions.
        raise PayloadError(f"{where}: nested too deeply for an array", "bad_shape") from exc
    except (TypeError, OverflowError) as exc:  # pragma: no cover - numpy version specific
        raise PayloadError(f"{where}: not a numeric array ({exc})", "bad_dtype") from exc


def _has_bool(values: Any) -> bool:
    """Whether a ``true``/``false`` hides among numbers (numpy reads it as 1/0)."""
    leaves = np.asarray(values, dtype=object).reshape(-1)
    return any(type(leaf) is bool for leaf in leaves)


def _numbers_from_objects(raw: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """Numbers numpy kept as objects: integers beyond 64 bits, or non-numbers (refused)."""
    dtype = DATATYPES[datatype][0]
    leaves = raw.reshape(-1)
    for leaf in leaves:
        if type(leaf) not in (int, float):
            raise PayloadError(f"{where}: takes numbers, got {json_type(leaf)}", "bad_dtype")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        for leaf in leaves:
            if type(leaf) is int and not info.min <= leaf <= info.max:
                raise PayloadError(
                    f"{where}: integer {_short(leaf)} does not fit {datatype}", "int_overflow"
                )
    try:
        return np.array([float(leaf) for leaf in leaves], dtype=np.float64).reshape(raw.shape)
    except OverflowError as exc:
        raise PayloadError(
            f"{where}: an integer is beyond the float64 range", "int_overflow"
        ) from exc


def _to_integers(
    values: Any, raw: np.ndarray, dtype: np.dtype, datatype: str, where: str
) -> np.ndarray:
    info = np.iinfo(dtype)
    low, high = raw.min(), raw.max()
    if raw.dtype.kind == "f":
        # numpy infers float64 when int64 and uint64-only values mix ([0, 2**64 - 1]);
        # the parsed values are still exact Python ints, so read them again.
        leaves = np.asarray(values, dtype=object).reshape(-1)
        if all(type(leaf) is int for leaf in leaves):
            exact_low, exact_high = min(leaves), max(leaves)
            if exact_low < info.min or exact_high > info.max:
                bad = exact_high if exact_high > info.max else exact_low
                raise PayloadError(
                    f"{where}: integer {_short(bad)} does not fit {datatype}", "int_overflow"
                )
            return np.array(leaves, dtype=dtype).reshape(raw.shape)
        # JSON integers longer than 64 bits arrive as floats; so do real fractions.
        integral = np.isfinite(raw) & (np.floor(raw) == raw)
        if not integral.all():
            bad = raw.reshape(-1)[int(np.argmin(integral.reshape(-1)))].item()
            raise PayloadError(f"{where}: {datatype} takes integers, got {bad!r}", "bad_dtype")
        # Python compares int and float exactly; the upper bound is exclusive.
        if float(low) < info.min or float(high) >= info.max + 1:
            raise PayloadError(
                f"{where}: integer {_short(high if float(high) >= info.max + 1 else low)} "
                f"does not fit {datatype}",
                "int_overflow",
            )
        # Integral and in range, so written with a fraction or exponent (2.0, 1e3).
        bad = next(leaf for leaf in leaves if type(leaf) is not int)
        raise PayloadError(f"{where}: {datatype} takes integers, got {bad!r}", "bad_dtype")
    if int(low) < info.min or int(high) > info.max:
        bad = high if int(high) > info.max else low
        raise PayloadError(
            f"{where}: integer {_short(bad)} does not fit {datatype}", "int_overflow"
        )
    return raw.astype(dtype, copy=False)


def _short(number: object) -> str:
    """An integer for a message: floats (integers beyond 64 bits) as read, long ones cut."""
    if isinstance(number, (float, np.floating)):
        return repr(float(number))
    text = str(int(number)) if isinstance(number, (int, np.integer)) else repr(number)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _to_strings(values: Any, where: str) -> np.ndarray:
    # dtype=object keeps ragged lists as list elements instead of raising; they are found
    # by the same pass that checks every leaf is a string.
    try:
        out = np.asarray(values, dtype=object)
    except ValueError as exc:  # pragma: no cover - numpy version specific
        raise PayloadError(f"{where}: ragged nested lists ({exc})", "ragged") from exc
    for leaf in out.reshape(-1):
        if type(leaf) is not str:
            if type(leaf) is list:
                # Uneven lengths, or more nesting than an array's 64 dimensions.
                raise PayloadError(f"{where}: ragged nested lists", "ragged")
            raise PayloadError(f"{where}: expected strings, got {json_type(leaf)}", "bad_dtype")
    return out


def check_shape(shape: Sequence[int], spec: TensorSpec, where: str) -> None:
    """Raise ``bad_shape`` unless ``shape`` fits the model's declared shape.

    ``-1`` in the declared shape matches any size; an empty declared shape is not checked.
    """
    declared = spec.shape
    if not declared:
        return
    if len(shape) == len(declared):
        for want, got in zip(declared, shape, strict=True):
            if want >= 0 and want != got:
                break
        else:
            return
    raise PayloadError(
        f"{where}: shape {list(shape)} does not fit the shape {list(declared)} "
        f"of model input {spec.name!r}",
        "bad_shape",
    )


def check_rows(rows: int, max_rows: int, where: str) -> None:
    """Raise ``empty_batch`` for no rows and ``batch_too_large`` above ``max_rows``."""
    if rows <= 0:
        raise PayloadError(f"{where}: the batch has no rows", "empty_batch")
    if rows > max_rows:
        raise PayloadError(
            f"{where}: {rows} rows, more than max_rows {max_rows}", "batch_too_large"
        )


def jsonable(array: np.ndarray) -> tuple[str, Any]:
    """An output array as ``(datatype, value)`` that :func:`jsonio.dumps` can write.

    Numeric arrays stay numpy (C-contiguous, native-endian), so float32 is written in its
    shortest form; ``BYTES`` become nested lists of ``str`` (bytes must be UTF-8).

    Raises
    ------
    PayloadError
        ``bad_output`` for an unsupported dtype or bytes that are not UTF-8.
    """
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        datatype = datatype_of_array(array)
    except KeyError as exc:
        raise PayloadError(
            f"outputs of dtype {array.dtype} have no datatype", "bad_output"
        ) from exc
    if datatype == "BYTES":
        return datatype, _strings(array).tolist()
    return datatype, np.ascontiguousarray(array)


def _strings(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PayloadError("a BYTES output is not UTF-8 text", "bad_output") from exc
        elif not isinstance(item, str):
            raise PayloadError(
                f"a BYTES output holds {type(item).__name__}, not str or bytes", "bad_output"
            )
        flat[index] = str(item)
    return out


def scores_array(values: Any, where: str) -> np.ndarray:
    """Scores from a response as float64; ``null`` (how NaN is written) reads as NaN.

    Raises
    ------
    PayloadError
        ``ragged`` or ``bad_dtype`` (strings, booleans, objects).
    """
    raw = _infer(values, where)
    kind = raw.dtype.kind
    if raw.size == 0 or kind in "iuf":
        return raw.astype(np.float64)
    if kind == "O":
        leaves = raw.reshape(-1)
        for leaf in leaves:
            if leaf is not None and type(leaf) not in (int, float):
                raise PayloadError(f"{where}: scores hold {json_type(leaf)}", "bad_dtype")
        floats = [math.nan if leaf is None else _float(leaf, where) for leaf in leaves]
        return np.array(floats, dtype=np.float64).reshape(raw.shape)
    what = "true/false" if kind == "b" else "strings"
    raise PayloadError(f"{where}: scores hold {what}, not numbers", "bad_dtype")


def _float(number: int | float, where: str) -> float:
    try:
        return float(number)
    except OverflowError as exc:
        raise PayloadError(f"{where}: a score is beyond float64", "int_overflow") from exc


def labels_array(values: Any, where: str) -> np.ndarray:
    """Labels from a response: int64, or an object array of ``str``.

    Booleans read as 0/1 and integral floats as integers.

    Raises
    ------
    PayloadError
        ``ragged``, ``bad_dtype`` (fractions, nulls, mixed types) or ``int_overflow``.
    """
    raw = _infer(values, where)
    kind = raw.dtype.kind
    if kind == "U":
        strings = _to_strings(values, where)
        return strings
    if raw.size == 0:
        return raw.astype(np.int64)
    if kind == "b":
        return raw.astype(np.int64)
    if kind in "iuf":
        if kind == "u" and int(raw.max()) > np.iinfo(np.int64).max:
            raise PayloadError(f"{where}: a label does not fit int64", "int_overflow")
        if kind == "f":
            if not (np.isfinite(raw).all() and bool((np.floor(raw) == raw).all())):
                raise PayloadError(f"{where}: labels hold fractions", "bad_dtype")
            if float(raw.min()) < -(2.0**63) or float(raw.max()) >= 2.0**63:
                raise PayloadError(f"{where}: a label does not fit int64", "int_overflow")
        return raw.astype(np.int64)
    raise PayloadError(
        f"{where}: labels must be integers or strings, one type throughout", "bad_dtype"
    )
