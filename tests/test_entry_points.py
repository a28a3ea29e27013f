"""Console scripts, ``python -m liveact`` and the packaging metadata a new user relies on."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from liveact.__main__ import COMMANDS, main, resolve, usage

tomllib = pytest.importorskip("tomllib")


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_console_scripts_match_the_command_list() -> None:
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {f"liveact-{name}": target for name, (target, _) in COMMANDS.items()}
    for target in scripts.values():
        assert callable(resolve(target)), target


def test_python_m_liveact_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "liveact"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert f"liveact-{name}" in proc.stdout
    assert "python -m liveact.bench" in proc.stdout
    assert proc.stdout.strip() == usage()


def test_python_m_liveact_runs_a_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "--help"])
    assert info.value.code == 0
    assert "--input_json" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_license_matches_pyproject() -> None:
    assert _pyproject()["project"]["license"]["text"] == "Apache-2.0"
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_runtime_and_test_dependencies_are_apart() -> None:
    """requirements.txt is the runtime list of pyproject; pytest only in the test extra."""
    project = _pyproject()["project"]
    lines = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert requirements == project["dependencies"]
    assert not any(re.match(r"pytest\b", r) for r in requirements)
    assert any(re.match(r"pytest\b", r) for r in project["optional-dependencies"]["test"])


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command installs the test extra; .ci/run runs the same install and pytest."""
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    command = re.search(r"## Tests\s+```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    assert ".[test]" in command and command.endswith("python -m pytest -q")
    for step in command.split(" && "):
        assert (
            step.replace("pip install", "python3 -m pip install --quiet").replace(
                "python -m pytest", "python3 -m pytest"
            )
            in ci
        ), step
