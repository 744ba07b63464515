"""report.html rendered by a real browser: headless Chromium takes a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shadowproxy.report import build_report, write_report
from tests.report.samples import PRODUCTION, PROMOTION, evidence

WIDTH, HEIGHT = 1280, 2000


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed from Debian when missing (as .ci/system-deps does)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            check=True,
            env=env,
            timeout=900,
        )
        found = shutil.which("chromium")
    assert found, "chromium is missing: run .ci/system-deps as root"
    return found


def screenshot(chromium: str, page: Path, tmp: Path) -> np.ndarray:
    shot = tmp / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # required when running as root (CI containers)
            "--disable-gpu",
            "--disable-dev-shm-usage",  # small /dev/shm in containers crashes the renderer
            f"--user-data-dir={tmp / 'profile'}",  # no shared profile between runs
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    assert shot.is_file()
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize(
    ("good", "banner_rgb"),
    [(True, (0x1A, 0x7F, 0x37)), (False, (0xCF, 0x22, 0x2E))],
    ids=["promote", "reject"],
)
def test_report_renders_in_headless_chromium(
    chromium: str, tmp_path: Path, good: bool, banner_rgb: tuple[int, int, int]
) -> None:
    report = build_report(
        PRODUCTION,
        [evidence("churn-rc", good=good), evidence("churn-bad", good=False)],
        PROMOTION,
    )
    _, _, html_path = write_report(report, tmp_path / "report")
    pixels = screenshot(chromium, html_path, tmp_path)
    # not blank: text, tables and plots give many distinct colours
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50
    # the banner shows the decision's colour across the top of the page
    corner = pixels[5:40, 5:300].reshape(-1, 3)
    assert (np.abs(corner.astype(int) - banner_rgb).max(axis=1) <= 8).mean() > 0.5
    # and the page continues below it with white background and content (plots, tables)
    body = pixels[300:, :]
    assert (body == 255).all(axis=2).mean() > 0.3
    assert (body != 255).any(axis=2).mean() > 0.05
