"""Non-ONNX formats are recognised from their bytes; real ONNX files never are."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.models.sniff import sniff_format
from shadowproxy.tensors import DATATYPES
from tests.support import models

PICKLABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(
    value=PICKLABLE,
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    trailer=st.sampled_from([b"", b"\x00", b"\n\n", b"junk after the stop"]),
)
def test_every_pickle_protocol_is_recognised(value: object, protocol: int, trailer: bytes) -> None:
    # Whatever follows the pickle's STOP: a loader would still unpickle the stream.
    detected = sniff_format(pickle.dumps(value, protocol=protocol) + trailer)
    assert detected is not None
    assert "pickle" in detected.name
    assert "arbitrary code" in detected.advice


def test_a_hand_written_protocol_0_pickle_that_runs_a_command_is_named() -> None:
    # The classic payload: os.system('echo hi'), followed by a stray byte.
    detected = sniff_format(b"(S'echo hi'\nios\nsystem\n.\x00")
    assert detected is not None and "pickle" in detected.name


def test_real_onnx_models_are_not_mistaken(
    model_dir: Path, logreg_model: models.BuiltModel, gbt_model: models.BuiltModel
) -> None:
    built = [logreg_model, gbt_model, models.zipmap_logistic_regression(model_dir)]
    built += [models.slow_matmul_chain(model_dir, depth=1, name="sniff_slow.onnx")]
    built += [
        models.identity_model(model_dir, onnx_type, f"sniff_{name}.onnx")
        for name, (_, onnx_type) in DATATYPES.items()
    ]
    for model in built:
        assert sniff_format(model.path.read_bytes()) is None, model.path.name


def _joblib_bytes(compress: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump({"coef": np.arange(4.0)}, buffer, compress=compress)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "name_part"),
    [
        pytest.param(_joblib_bytes(0), "pickle", id="joblib-plain"),
        pytest.param(_joblib_bytes(3), "zlib", id="joblib-zlib"),
        pytest.param(_joblib_bytes("gzip"), "gzip", id="joblib-gzip"),
        pytest.param(_joblib_bytes("bz2"), "bzip2", id="joblib-bz2"),
        pytest.param(_joblib_bytes("xz"), "xz", id="joblib-xz"),
        pytest.param(_joblib_bytes("lzma"), "lzma", id="joblib-lzma"),
        # What torch.save wrote before 1.6: a pickle of its magic number comes first.
        pytest.param(
            pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps({}, protocol=2),
            "legacy PyTorch",
            id="torch-legacy",
        ),
    ],
)
def test_pickle_carriers_are_refused_as_code(data: bytes, name_part: str) -> None:
    detected = sniff_format(data)
    assert detected is not None
    assert name_part in detected.name
    assert "arbitrary code" in detected.advice and "ONNX" in detected.advice


def _zip_bytes(member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, pickle.dumps({"weights": [1, 2]}))
    return buffer.getvalue()


def test_torch_zip_checkpoint_is_refused_as_pickles() -> None:
    detected = sniff_format(_zip_bytes("archive/data.pkl"))
    assert detected is not None
    assert "PyTorch" in detected.name
    assert "arbitrary code" in detected.advice


def test_plain_zip_is_named() -> None:
    detected = sniff_format(_zip_bytes("model/readme.txt"))
    assert detected is not None
    assert "zip archive" in detected.name
    assert "arbitrary code" not in detected.advice


@pytest.mark.parametrize("padding", [b"", b" ", b"\n  "])
def test_safetensors_header_is_named(padding: bytes) -> None:
    fields = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    header = padding + json.dumps(fields).encode()
    data = struct.pack("<Q", len(header)) + header + np.ones(2, np.float32).tobytes()
    detected = sniff_format(data)
    assert detected is not None
    assert "safetensors" in detected.name


def test_npy_is_named() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(5))
    detected = sniff_format(buffer.getvalue())
    assert detected is not None
    assert ".npy" in detected.name


def test_hdf5_signature_is_named() -> None:
    detected = sniff_format(b"\x89HDF\r\n\x1a\n" + bytes(600))
    assert detected is not None
    assert "HDF5" in detected.name
