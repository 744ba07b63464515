"""Small helpers shared by the model-loading tests."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from shadowproxy.config.model import ModelFile
from shadowproxy.errors import ModelError
from shadowproxy.models import check_model
from tests.support.models import BuiltModel, sha256_of

DEFAULT_MAX = ModelFile(path=Path("unused")).max_bytes


def pinned(built: BuiltModel, max_bytes: int = DEFAULT_MAX) -> ModelFile:
    """The config of ``built``, pinned to its sha256."""
    return ModelFile(path=built.path, sha256=built.sha256, max_bytes=max_bytes)


def unpinned(path: Path, max_bytes: int = DEFAULT_MAX) -> ModelFile:
    """The config of the file at ``path``, accepted without a pin."""
    return ModelFile(path=path, allow_unpinned=True, max_bytes=max_bytes)


def pinned_file(path: Path) -> ModelFile:
    """The config of the file at ``path``, pinned to what it holds now."""
    return ModelFile(path=path, sha256=sha256_of(path))


def refusal(spec: ModelFile, where: str = "model") -> str:
    """The message of the ModelError that checking ``spec`` raises (fails if none is)."""
    with pytest.raises(ModelError) as caught:
        check_model(spec, where)
    message = str(caught.value)
    # Every refusal names the config key and the file.
    assert message.startswith(f"{where}: {spec.path}"), message
    return message


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` without onnx's own validation, so broken models can be written too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
