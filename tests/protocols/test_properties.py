"""Property tests: every decoder refuses bad input only with PayloadError, and round trips."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import (
    REASONS,
    JsonProtocol,
    PayloadProtocol,
    V1Protocol,
    V2Protocol,
    jsonio,
)
from shadowproxy.tensors import DATATYPES, TensorSpec, numpy_dtype

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(max_examples=100, deadline=None)
# Per protocol, each side: 200 examples keep the ten arbitrary-input tests to ~10 s.
ARBITRARY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FEATURES = ("a", "b")
WIDTHS: dict[str, Literal[16, 32, 64]] = {"FP16": 16, "FP32": 32, "FP64": 64}
SPEC_SETS = [
    [TensorSpec("x", "FP32", (-1, 2))],
    [TensorSpec("x", "INT64", (-1,)), TensorSpec("y", "BYTES", (-1, 1))],
    [TensorSpec("x", "BOOL", (-1, 2))],
    [TensorSpec("x", "UINT8", (-1, -1))],
    [TensorSpec("x", "FP16", ())],
]
PROTOCOLS: list[PayloadProtocol] = [
    V1Protocol(Payload(max_rows=8)),
    V2Protocol(Payload(max_rows=8)),
    JsonProtocol(Payload(max_rows=8), FEATURES),
    JsonProtocol(Payload(max_rows=8, rows="r", nonfinite="allow"), FEATURES),
    V2Protocol(Payload(max_depth=4, nonfinite="allow")),
]
SELECTORS = [Outputs(), Outputs(score="a"), Outputs(label="b.c"), Outputs(score="a", label="a")]

# -- strategies --------------------------------------------------------------------------

tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\:,ax é'), max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | tricky_text
    | st.sampled_from(["x", "y", "a", "b", "FP32", "BYTES", "INT64", "label", "scores"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(scalars.filter(lambda v: isinstance(v, str)), children, max_size=4)
    ),
    max_leaves=25,
)
numbers = st.integers(-300, 300) | st.floats(-1e40, 1e40) | st.integers() | st.booleans()
numeric_rows = st.lists(st.lists(numbers, max_size=3) | numbers, max_size=4)

names = st.sampled_from(["x", "y", "z"]) | json_values
shapes = st.lists(st.integers(-1, 4), max_size=3) | json_values
datatypes = st.sampled_from([*sorted(DATATYPES), "FLOAT"]) | json_values
tensors = st.fixed_dictionaries(
    {"name": names, "shape": shapes, "datatype": datatypes, "data": numeric_rows | json_values},
    optional={"parameters": json_values},
)
v2_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values},
)
instances = st.lists(
    numeric_rows
    | st.dictionaries(st.sampled_from(["x", "y", "z"]), numeric_rows | json_values, max_size=3)
    | json_values,
    max_size=4,
)
v1_bodies = st.one_of(
    st.fixed_dictionaries({"instances": instances | json_values}),
    st.fixed_dictionaries({"inputs": numeric_rows | json_values}),
    st.fixed_dictionaries(
        {"inputs": st.dictionaries(st.sampled_from(["x", "y"]), numeric_rows, max_size=2)}
    ),
)
feature_rows = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), numbers | json_values, max_size=3)
    | json_values,
    max_size=4,
)
json_bodies = feature_rows | st.fixed_dictionaries({"r": feature_rows | json_values})
v2_responses = st.fixed_dictionaries(
    {"outputs": st.lists(tensors, max_size=3) | json_values},
    optional={"error": json_values},
)
row_responses = st.fixed_dictionaries({"predictions": feature_rows | numeric_rows | json_values})


def dump(value: Any) -> bytes:
    """JSON with any integer, and NaN/Infinity literals as some servers write them."""
    return json.dumps(value).encode()


any_body = st.one_of(
    json_values, v2_bodies, v1_bodies, json_bodies, v2_responses, row_responses
).map(dump)
raw_bytes = st.binary(max_size=64) | any_body.map(lambda body: body[: len(body) // 2])


def writable(text: object) -> bool:
    """A Python ``str`` that can be written as UTF-8 again (no lone surrogate)."""
    if type(text) is not str:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_decoded(protocol: PayloadProtocol, body: bytes, specs: list[TensorSpec]) -> None:
    """Decoding gives well-formed arrays, or PayloadError with a listed reason; nothing else."""
    try:
        decoded = protocol.decode_request(body, specs)
    except PayloadError as error:
        assert error.reason in REASONS, error.reason
        return
    assert 1 <= decoded.rows <= protocol.payload.max_rows
    assert decoded.id is None or writable(decoded.id)
    assert all(writable(name) for name in decoded.outputs)
    assert set(decoded.arrays) == {spec.name for spec in specs}
    for spec in specs:
        array = decoded.arrays[spec.name]
        assert array.dtype == numpy_dtype(spec.datatype)
        assert array.shape[0] == decoded.rows
        if spec.datatype == "BYTES":
            assert all(writable(item) for item in array.reshape(-1))
        elif array.dtype.kind == "f" and protocol.payload.nonfinite == "reject":
            assert np.isfinite(array).all()


def check_extracted(protocol: PayloadProtocol, body: bytes, outputs: Outputs) -> None:
    try:
        got = protocol.extract(body, outputs)
    except PayloadError as error:
        assert error.reason in REASONS, error.reason
        return
    assert got.rows >= 1
    assert got.scores is not None or got.labels is not None
    if got.scores is not None:
        assert got.scores.dtype == np.float64 and got.scores.ndim == 2
        assert got.scores.shape[0] == got.rows and got.scores.shape[1] >= 1
    if got.labels is not None:
        assert got.labels.ndim == 1 and len(got.labels) == got.rows
        assert got.labels.dtype == np.int64 or all(writable(v) for v in got.labels)


@FUZZ
@given(
    body=any_body | raw_bytes,
    protocol=st.sampled_from(PROTOCOLS),
    specs=st.sampled_from(SPEC_SETS),
)
def test_decoders_raise_only_payload_errors(
    body: bytes, protocol: PayloadProtocol, specs: list[TensorSpec]
) -> None:
    check_decoded(protocol, body, specs)


@FUZZ
@given(body=v2_bodies.map(dump), specs=st.sampled_from(SPEC_SETS))
def test_v2_decoder_on_request_like_bodies(body: bytes, specs: list[TensorSpec]) -> None:
    check_decoded(PROTOCOLS[1], body, specs)


@FUZZ
@given(body=v1_bodies.map(dump), specs=st.sampled_from(SPEC_SETS))
def test_v1_decoder_on_request_like_bodies(body: bytes, specs: list[TensorSpec]) -> None:
    check_decoded(PROTOCOLS[0], body, specs)


@FUZZ
@given(
    body=json_bodies.map(dump),
    protocol=st.sampled_from(PROTOCOLS[2:4]),
    specs=st.sampled_from(SPEC_SETS),
)
def test_json_decoder_on_row_like_bodies(
    body: bytes, protocol: PayloadProtocol, specs: list[TensorSpec]
) -> None:
    check_decoded(protocol, body, specs)


@FUZZ
@given(
    body=any_body | raw_bytes,
    protocol=st.sampled_from(PROTOCOLS),
    outputs=st.sampled_from(SELECTORS),
)
def test_extract_raises_only_payload_errors(
    body: bytes, protocol: PayloadProtocol, outputs: Outputs
) -> None:
    check_extracted(protocol, body, outputs)


# -- every decoder and extractor on arbitrary JSON text and arbitrary bytes ----------------
#
# The strategies above build Python values and let ``json.dumps`` write them. These write
# the text themselves, to reach what no serializer produces: numbers beyond float64 and
# int64, NaN and Infinity literals, escapes of lone surrogates, raw control characters and
# invalid UTF-8, duplicate keys, odd whitespace, nesting past ``max_depth``; and they break
# well-formed bodies byte by byte.

DECODERS = {
    "v1": V1Protocol(Payload(max_rows=8)),
    "v2": V2Protocol(Payload(max_rows=8)),
    "v2_shallow_nonfinite": V2Protocol(Payload(max_depth=4, nonfinite="allow")),
    "json_rows": JsonProtocol(Payload(max_rows=8), FEATURES),
    "json_nested": JsonProtocol(
        Payload(max_rows=8, rows="r", response_rows="", nonfinite="allow"),
        ("a", "b.c"),
        Outputs(score="s", label="l.m"),
    ),
}
KEY_TEXTS = st.sampled_from(
    ["inputs", "instances", "outputs", "predictions", "name", "shape", "datatype", "data",
     "id", "parameters", "error", "x", "y", "a", "b", "c", "r", "s", "l", "m", "label",
     "score", "scores", "probabilities", "FP32", "BYTES", "INT64", "BOOL"]
).map(lambda key: f'"{key}"')  # fmt: skip
WHITESPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])
number_texts = st.one_of(
    st.integers().map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "-0", "-0.0", "1e400", "-1e400", "1e-400",
         "9223372036854775808", "-9223372036854775809", "18446744073709551616"]
    ),
)  # fmt: skip
escapes = st.one_of(
    st.sampled_from(['\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]),
    st.integers(0, 0xFFFF).map(lambda code: f"\\u{code:04x}"),
    st.integers(0xD800, 0xDFFF).map(lambda code: f"\\u{code:04X}"),  # lone surrogates
)
# Raw characters include controls and surrogates, which become invalid UTF-8 below.
string_texts = st.lists(
    st.characters(exclude_characters='"\\') | escapes | st.sampled_from(["é", "€", "😀"]),
    max_size=8,
).map(lambda parts: '"' + "".join(parts) + '"')
scalar_texts = number_texts | string_texts | st.sampled_from(["true", "false", "null"])


def container_texts(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    items = st.lists(st.tuples(WHITESPACE, children), max_size=5)
    members = st.lists(st.tuples(KEY_TEXTS | string_texts, WHITESPACE, children), max_size=5)
    return items.map(lambda xs: "[" + ",".join(w + v for w, v in xs) + "]") | members.map(
        lambda ms: "{" + ",".join(f"{k}:{w}{v}" for k, w, v in ms) + "}"
    )


value_texts = st.recursive(scalar_texts, container_texts, max_leaves=30)
json_texts = st.one_of(
    value_texts,
    # An envelope key the protocols look for, around any value.
    st.tuples(KEY_TEXTS, value_texts).map(lambda kv: "{" + kv[0] + ":" + kv[1] + "}"),
    # Nesting past every max_depth in use (4 and the default 32).
    st.tuples(st.integers(1, 40), value_texts).map(lambda nv: "[" * nv[0] + nv[1] + "]" * nv[0]),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


@st.composite
def encoded_responses(draw: st.DrawFn) -> bytes:
    """A well-formed response of one protocol, as a local model's answer is written."""
    protocol = draw(st.sampled_from(list(DECODERS.values())))
    rows = draw(st.integers(1, 4))
    outputs = {
        "label": draw(hnp.arrays(np.int64, rows)),
        "probabilities": draw(hnp.arrays(np.float32, (rows, 2))),
    }
    return protocol.encode_response(outputs, model_name="m", model_version="1", request_id="i")


STRUCTURAL = st.sampled_from(
    [b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"-", b"e", b"NaN", b"\\ud800", b"null"]
)


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> bytes:
    """A body broken by one to four edits: flipped, inserted, deleted or repeated bytes."""
    body = bytearray(draw(bodies))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if edit == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            body[at:at] = draw(STRUCTURAL | st.binary(min_size=1, max_size=3))
        elif edit == "delete":
            del body[at : at + draw(st.integers(1, 8))]
        elif edit == "truncate":
            del body[at:]
        elif edit == "repeat":
            body[at:at] = body[at : at + draw(st.integers(1, 16))]
    return bytes(body)


arbitrary_bodies = st.one_of(
    json_texts,
    mutated(any_body | encoded_responses()),
    st.binary(max_size=512),
)
# Non-finite numbers send the parser to its fallback, which must not let through strings
# that orjson refuses (a lone surrogate): they could never be written out again.
SURROGATE_REQUEST = (
    b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]},'
    b' {"name": "y", "shape": [1, 1], "datatype": "BYTES", "data": ["\\ud800"]}],'
    b' "parameters": {"n": NaN}}'
)
SURROGATE_RESPONSE = b'{"predictions": [{"label": "\\udfff", "score": NaN}], "l": {"m": "\\ud800"}}'


@ARBITRARY
@pytest.mark.parametrize("protocol", DECODERS.values(), ids=DECODERS.keys())
@example(body=SURROGATE_REQUEST, specs=SPEC_SETS[1])
@given(body=arbitrary_bodies, specs=st.sampled_from(SPEC_SETS))
def test_every_decoder_on_arbitrary_json_and_bytes(
    protocol: PayloadProtocol, body: bytes, specs: list[TensorSpec]
) -> None:
    check_decoded(protocol, body, specs)


@ARBITRARY
@pytest.mark.parametrize("protocol", DECODERS.values(), ids=DECODERS.keys())
@example(body=SURROGATE_RESPONSE, outputs=Outputs())
@example(body=SURROGATE_RESPONSE, outputs=Outputs(label="l.m"))
@given(body=arbitrary_bodies, outputs=st.sampled_from(SELECTORS))
def test_every_extractor_on_arbitrary_json_and_bytes(
    protocol: PayloadProtocol, body: bytes, outputs: Outputs
) -> None:
    check_extracted(protocol, body, outputs)


# -- nearly valid requests: valid ones decode to exactly their values ----------------------

JUNK = numbers | scalars | st.lists(numbers, max_size=2)
NEAR_SPECS = [
    [TensorSpec("x", "FP32", (-1, 2))],
    [TensorSpec("x", "INT64", (-1,)), TensorSpec("y", "BYTES", (-1, 1))],
    [TensorSpec("x", "BOOL", (-1, 2))],
    [TensorSpec("x", "UINT8", (-1, -1))],
    [TensorSpec("x", "FP16", (-1,))],
    [TensorSpec("x", "UINT64", (-1, 2)), TensorSpec("y", "INT8", (-1,))],
]


def python_elements(datatype: str) -> st.SearchStrategy[Any]:
    """Plain Python values that a datatype holds exactly."""
    if datatype == "BYTES":
        return st.text(max_size=5)
    if datatype == "BOOL":
        return st.booleans()
    if datatype.startswith("FP"):
        return st.floats(width=WIDTHS[datatype], allow_nan=False, allow_infinity=False)
    info = np.iinfo(numpy_dtype(datatype))
    return st.integers(int(info.min), int(info.max))


def nested_values(draw: st.DrawFn, shape: list[int], leaves: st.SearchStrategy[Any]) -> Any:
    if not shape:
        return draw(leaves)
    return [nested_values(draw, shape[1:], leaves) for _ in range(shape[0])]


def flatten(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in flatten(item)]


def expected_array(values: Any, shape: list[int], datatype: str) -> np.ndarray:
    dtype = numpy_dtype(datatype)
    array = np.empty(shape, dtype=dtype)
    leaves = flatten(values)
    array.reshape(-1)[:] = leaves if dtype.kind == "O" else np.array(leaves, dtype)
    return array


@st.composite
def near_valid_requests(
    draw: st.DrawFn,
) -> tuple[PayloadProtocol, list[TensorSpec], bytes, dict[str, np.ndarray] | None]:
    """A request for one protocol, and the arrays it holds (None when corrupted).

    One request in four is corrupted: junk among the values, then one structural change.
    """
    kind = draw(st.sampled_from(["v1", "v1-columns", "v2", "json"]))
    if kind == "json":
        specs = [TensorSpec("x", "FP32", (-1, len(FEATURES)))]
    else:
        specs = draw(st.sampled_from(NEAR_SPECS))
    corrupt = draw(st.integers(0, 3)) == 0
    rows = draw(st.integers(0, 9))
    values: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        shape = [rows] + [d if d >= 0 else draw(st.integers(0, 3)) for d in spec.shape[1:]]
        leaves = (
            python_elements(spec.datatype) | JUNK if corrupt else python_elements(spec.datatype)
        )
        values[spec.name] = nested_values(draw, shape, leaves)
        shapes[spec.name] = shape
    expected = None
    if not corrupt:
        expected = {
            spec.name: expected_array(values[spec.name], shapes[spec.name], spec.datatype)
            for spec in specs
        }
    mutate = corrupt and draw(st.booleans())
    body: Any
    if kind == "v2":
        protocol: PayloadProtocol = V2Protocol(Payload(max_rows=8))
        flat = draw(st.booleans())
        inputs = [
            {
                "name": spec.name,
                "shape": shapes[spec.name],
                "datatype": spec.datatype,
                "data": flatten(values[spec.name]) if flat else values[spec.name],
            }
            for spec in specs
        ]
        if mutate:
            victim = draw(st.sampled_from(inputs))
            field = draw(st.sampled_from(["name", "shape", "datatype", "data"]))
            victim[field] = draw(JUNK | st.sampled_from([*DATATYPES, "y", "zz", [1, 2]]))
        body = {"inputs": inputs}
    elif kind == "v1":
        protocol = V1Protocol(Payload(max_rows=8))
        if len(specs) == 1 and draw(st.booleans()):
            body = {"instances": values["x"]}
        else:
            body = {"instances": [{n: v[i] for n, v in values.items()} for i in range(rows)]}
            if mutate and rows:
                row = draw(st.sampled_from(body["instances"]))
                row.pop("x") if draw(st.booleans()) else row.update(zz=1)
    elif kind == "v1-columns":
        protocol = V1Protocol(Payload(max_rows=8))
        body = {"inputs": values if len(specs) > 1 or draw(st.booleans()) else values["x"]}
        if mutate:
            body["inputs"] = draw(JUNK) if draw(st.booleans()) else {**values, "x": draw(JUNK)}
    else:
        protocol = JsonProtocol(Payload(max_rows=8), FEATURES)
        body = [dict(zip(FEATURES, row, strict=True)) for row in values["x"]]
        if mutate and rows:
            draw(st.sampled_from(body)).pop(draw(st.sampled_from(FEATURES)))
    return protocol, specs, dump(body), expected


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=near_valid_requests())
def test_near_valid_requests(
    case: tuple[PayloadProtocol, list[TensorSpec], bytes, dict[str, np.ndarray] | None],
) -> None:
    protocol, specs, body, expected = case
    if expected is None:
        check_decoded(protocol, body, specs)
        return
    rows = next(iter(expected.values())).shape[0]
    try:
        decoded = protocol.decode_request(body, specs)
    except PayloadError as error:
        wanted = "empty_batch" if rows == 0 else "batch_too_large"
        assert error.reason == wanted and not 1 <= rows <= protocol.payload.max_rows, error
        return
    assert decoded.rows == rows
    for name, array in expected.items():
        assert same(decoded.arrays[name], array), (name, decoded.arrays[name], array)


# -- round trips -------------------------------------------------------------------------


def elements(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BYTES":
        return st.text(max_size=5)
    if datatype.startswith("FP"):
        return st.floats(width=WIDTHS[datatype], allow_nan=False, allow_infinity=False)
    return hnp.from_dtype(numpy_dtype(datatype))


@st.composite
def tensors_of(draw: st.DrawFn, datatype: str | None = None) -> tuple[str, np.ndarray]:
    datatype = datatype or draw(st.sampled_from(sorted(DATATYPES)))
    shape = draw(st.tuples(st.integers(1, 4)) | st.tuples(st.integers(1, 4), st.integers(0, 3)))
    array = draw(hnp.arrays(numpy_dtype(datatype), shape, elements=elements(datatype)))
    return datatype, array


def same(decoded: np.ndarray, original: np.ndarray) -> bool:
    """Equal dtype, shape and values; numeric values bit for bit (so -0.0 stays -0.0)."""
    if decoded.dtype != original.dtype or decoded.shape != original.shape:
        return False
    if original.dtype == object:
        return decoded.tolist() == original.tolist()
    return decoded.tobytes() == original.tobytes()


@PROPERTY
@given(tensor=tensors_of())
def test_v2_tensors_round_trip(tensor: tuple[str, np.ndarray]) -> None:
    datatype, original = tensor
    protocol = V2Protocol(Payload())
    response = protocol.encode_response(
        {"t": original}, model_name="m", model_version="1", request_id="i"
    )
    request = orjson.dumps({"id": "i", "inputs": orjson.loads(response)["outputs"]})
    spec = TensorSpec("t", datatype, (-1, *original.shape[1:]))
    decoded = protocol.decode_request(request, [spec])
    assert decoded.rows == original.shape[0] and decoded.id == "i"
    assert same(decoded.arrays["t"], original)


@PROPERTY
@given(tensor=tensors_of())
def test_v1_predictions_round_trip_as_instances(tensor: tuple[str, np.ndarray]) -> None:
    datatype, original = tensor
    protocol = V1Protocol(Payload())
    response = protocol.encode_response(
        {"t": original}, model_name="m", model_version="", request_id=None
    )
    request = orjson.dumps({"instances": orjson.loads(response)["predictions"]})
    spec = TensorSpec("t", datatype, (-1, *original.shape[1:]))
    assert same(protocol.decode_request(request, [spec]).arrays["t"], original)


@PROPERTY
@given(
    matrix=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.just(len(FEATURES))),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    )
)
def test_json_rows_round_trip(matrix: np.ndarray) -> None:
    protocol = JsonProtocol(Payload(rows="data"), FEATURES)
    rows = [dict(zip(FEATURES, map(float, row), strict=True)) for row in matrix]
    decoded = protocol.decode_request(
        orjson.dumps({"data": rows}), [TensorSpec("x", "FP32", (-1, 2))]
    )
    assert same(decoded.arrays["x"], matrix)


@PROPERTY
@given(
    labels=hnp.arrays(np.int64, st.integers(1, 5)),
    data=st.data(),
    protocol=st.sampled_from(
        [V1Protocol(Payload()), V2Protocol(Payload()), JsonProtocol(Payload(), FEATURES)]
    ),
)
def test_local_responses_extract_what_was_encoded(
    labels: np.ndarray, data: st.DataObject, protocol: PayloadProtocol
) -> None:
    scores = data.draw(
        hnp.arrays(
            np.float32,
            (len(labels), 2),
            elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
        )
    )
    body = protocol.encode_response(
        {"label": labels, "probabilities": scores},
        model_name="m",
        model_version="",
        request_id=None,
    )
    got = protocol.extract(body, Outputs())
    assert got.rows == len(labels)
    assert got.labels is not None and np.array_equal(got.labels, labels)
    assert got.scores is not None and same(got.scores.astype(np.float32), scores)


# -- limits --------------------------------------------------------------------------------


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(value=json_values)
def test_nesting_depth_matches_the_parsed_structure(value: Any) -> None:
    body = json.dumps(value).encode()
    assert jsonio.nesting_depth(body) == depth_of(value)


@PROPERTY
@given(
    depth=st.integers(0, 80), max_depth=st.integers(2, 64), kind=st.sampled_from("v1 v2 js".split())
)
def test_max_depth_is_respected(depth: int, max_depth: int, kind: str) -> None:
    payload = Payload(max_depth=max_depth)
    if kind == "v1":
        protocol: PayloadProtocol = V1Protocol(payload)
        value: Any = {"instances": nested(1.0, depth)}
    elif kind == "v2":
        protocol = V2Protocol(payload)
        value = {
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": nested(1.0, depth)}]
        }
    else:
        protocol = JsonProtocol(payload, ("a",))
        value = {"a": nested(1.0, depth)}
    body = orjson.dumps(value)
    try:
        protocol.decode_request(body, [TensorSpec("x", "FP32", ())])
    except PayloadError as error:
        assert (error.reason == "too_deep") == (depth_of(value) > max_depth), error
    else:
        assert depth_of(value) <= max_depth


@PROPERTY
@given(
    rows=st.integers(0, 12), max_rows=st.integers(1, 8), kind=st.sampled_from("v1 v2 js".split())
)
def test_max_rows_is_respected(rows: int, max_rows: int, kind: str) -> None:
    payload = Payload(max_rows=max_rows)
    if kind == "v1":
        protocol: PayloadProtocol = V1Protocol(payload)
        value: Any = {"instances": [[1.0, 2.0]] * rows}
    elif kind == "v2":
        protocol = V2Protocol(payload)
        value = {
            "inputs": [
                {"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": [1.0, 2.0] * rows}
            ]
        }
    else:
        protocol = JsonProtocol(payload, FEATURES)
        value = [{"a": 1.0, "b": 2.0}] * rows
    spec = [TensorSpec("x", "FP32", (-1, 2))]
    try:
        decoded = protocol.decode_request(orjson.dumps(value), spec)
    except PayloadError as error:
        expected = "empty_batch" if rows == 0 else "batch_too_large"
        assert not 1 <= rows <= max_rows and error.reason == expected
    else:
        assert 1 <= rows <= max_rows and decoded.rows == rows
        assert decoded.arrays["x"].shape == (rows, 2)
