"""External data: read once from inside the model's folder, pinned, and embedded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from shadowproxy.config.model import ModelFile
from shadowproxy.models import build_session, check_model, run_model
from tests.models.helpers import pinned, refusal, save, unpinned
from tests.support import models


@pytest.fixture
def external(tmp_path: Path) -> models.BuiltModel:
    """A model in ``tmp_path/model`` whose weight lives in ``weights.bin`` next to it."""
    return models.external_data_model(tmp_path / "model")


def _relocate(built: models.BuiltModel, location: str) -> Path:
    """Rewrite ``built``'s model file so its weight is read from ``location``."""
    model = onnx.load(str(built.path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    return save(model, built.path)


def _weights(built: models.BuiltModel) -> bytes:
    return (built.path.parent / "weights.bin").read_bytes()


def test_valid_external_data_is_embedded_and_runs(external: models.BuiltModel) -> None:
    checked = check_model(pinned(external))
    assert checked.size == external.path.stat().st_size + len(_weights(external))
    model = onnx.load_from_string(checked.data)
    assert model.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT
    assert not model.graph.initializer[0].external_data
    x = np.zeros((2, 4), np.float32)
    out = run_model(build_session(checked, 1), checked.signature, {"x": x})
    np.testing.assert_array_equal(out["y"], np.tile([1.0, 2.0, 3.0, 4.0], (2, 1)))


def test_pin_covers_the_external_data(external: models.BuiltModel) -> None:
    weights = external.path.parent / "weights.bin"
    # Same size, different weights: only the pin can tell.
    weights.write_bytes(np.array([9, 9, 9, 9], np.float32).tobytes())
    message = refusal(pinned(external))
    assert "does not match its pinned sha256" in message
    assert "external.onnx followed by weights.bin" in message


def test_pin_of_the_model_file_alone_is_not_enough(external: models.BuiltModel) -> None:
    spec = ModelFile(
        path=external.path, sha256=hashlib.sha256(external.path.read_bytes()).hexdigest()
    )
    assert "does not match its pinned sha256" in refusal(spec)


def test_external_bytes_count_against_max_bytes(external: models.BuiltModel) -> None:
    total = external.path.stat().st_size + len(_weights(external))
    assert check_model(pinned(external, max_bytes=total)).size == total
    message = refusal(pinned(external, max_bytes=total - 1))
    assert "'weights.bin' does not fit in max_bytes" in message


def test_session_uses_the_checked_weights_not_the_file(external: models.BuiltModel) -> None:
    checked = check_model(pinned(external))
    (external.path.parent / "weights.bin").write_bytes(np.full(4, 100, np.float32).tobytes())
    out = run_model(build_session(checked, 1), checked.signature, {"x": np.zeros((1, 4), "f4")})
    np.testing.assert_array_equal(out["y"], [[1.0, 2.0, 3.0, 4.0]])


def test_parent_escape_is_refused(external: models.BuiltModel) -> None:
    (external.path.parent.parent / "x.bin").write_bytes(_weights(external))
    _relocate(external, "../x.bin")
    assert "external data '../x.bin' contains '..'" in refusal(unpinned(external.path))


def test_absolute_location_is_refused(external: models.BuiltModel) -> None:
    absolute = str(external.path.parent / "weights.bin")
    _relocate(external, absolute)
    assert f"external data {absolute!r} is an absolute path" in refusal(unpinned(external.path))


def test_symlinked_file_is_refused(external: models.BuiltModel, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(_weights(external))
    (external.path.parent / "link.bin").symlink_to(outside)
    _relocate(external, "link.bin")
    assert "external data 'link.bin' is a symlink" in refusal(unpinned(external.path))


def test_symlink_inside_the_folder_is_refused_too(external: models.BuiltModel) -> None:
    (external.path.parent / "alias.bin").symlink_to("weights.bin")
    _relocate(external, "alias.bin")
    assert "'alias.bin' is a symlink" in refusal(unpinned(external.path))


def test_symlinked_folder_resolving_outside_is_refused(
    external: models.BuiltModel, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(_weights(external))
    (external.path.parent / "sub").symlink_to(elsewhere, target_is_directory=True)
    _relocate(external, "sub/w.bin")
    message = refusal(unpinned(external.path))
    assert "'sub/w.bin' resolves outside the model's folder" in message


def test_hard_link_is_refused(external: models.BuiltModel, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(_weights(external))
    os.link(outside, external.path.parent / "hard.bin")
    _relocate(external, "hard.bin")
    assert "external data 'hard.bin' is a hard link" in refusal(unpinned(external.path))


def test_missing_external_file_is_refused(external: models.BuiltModel) -> None:
    _relocate(external, "gone.bin")
    assert "external data 'gone.bin' does not exist" in refusal(unpinned(external.path))


def test_runtime_memory_address_location_never_reaches_onnxruntime(
    external: models.BuiltModel,
) -> None:
    # onnxruntime reads this special location as a raw memory address.
    _relocate(external, "*/_ORT_MEM_ADDR_/*")
    assert "does not exist" in refusal(unpinned(external.path))


def test_subfolder_inside_the_model_folder_is_fine(tmp_path: Path) -> None:
    built = models.external_data_model(tmp_path / "m", location="data/weights.bin")
    assert check_model(pinned(built)).size > built.path.stat().st_size


def test_range_past_the_end_of_the_file_is_refused(external: models.BuiltModel) -> None:
    model = onnx.load(str(external.path), load_external_data=False)
    tensor = model.graph.initializer[0]
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = "8"
    if not any(entry.key == "offset" for entry in tensor.external_data):
        tensor.external_data.add(key="offset", value="8")
    save(model, external.path)
    assert "past the end" in refusal(unpinned(external.path))
