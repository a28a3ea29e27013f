"""Missing parity fixtures never pass silently: CI fails, a local run ends with one loud line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

# A cheap parity test: it only needs the VAE fixture's files.
TARGET = "tests/test_vae.py::test_infer_config_and_conversion"


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIVEACT_FIXTURES": str(tmp_path / "no-fixtures-here"), "OMP_NUM_THREADS": "1"}
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TARGET],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_missing_fixtures_fail_in_ci(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, "true")
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "parity fixtures missing" in proc.stdout and "CI must check parity" in proc.stdout, proc.stdout[
        -2000:
    ]


def test_missing_fixtures_are_said_loudly_locally(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, None)
    assert proc.returncode == 0, proc.stdout[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "PARITY NOT CHECKED" in line]
    assert len(lines) == 1, proc.stdout[-2000:]
    assert str(tmp_path / "no-fixtures-here") in lines[0] and "LIVEACT_FIXTURES" in lines[0]
