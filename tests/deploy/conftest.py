"""The checkov tool environment shared by the Dockerfile and the chart tests.

checkov pins versions the project's own lock cannot satisfy (``packaging<24``, an old
boto3), so it runs from a virtualenv of its own under ``.venv/tools``, installed once from
the exact versions in ``checkov.lock``: a new release of checkov or of one of its
dependencies cannot change a verdict unnoticed, and later runs reuse it.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).with_name("checkov.lock")
TOOL_ENV = ROOT / ".venv" / "tools" / "checkov"


@pytest.fixture(scope="session")
def checkov() -> Path:
    binary = TOOL_ENV / "bin" / "checkov"
    stamp = TOOL_ENV / "pins.txt"
    if not binary.exists() or not stamp.exists() or stamp.read_text() != PINS.read_text():
        venv.EnvBuilder(with_pip=True, clear=True).create(TOOL_ENV)
        subprocess.run(
            [TOOL_ENV / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps",
             "-r", PINS],
            check=True,
            timeout=900,
        )  # fmt: skip
        stamp.write_text(PINS.read_text())
    assert binary.exists(), f"checkov did not install into {TOOL_ENV}"
    return binary
