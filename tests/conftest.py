"""Shared pytest helpers: fixture discovery and tiny-model factories.

Fixture tests never name their fixtures: every folder under ``dit_parity/`` or ``components/<kind>/``
(that folder included) that holds a ``meta.json`` is one case, and every dim comes from its files.
The root is ``$LIVEACT_FIXTURES`` when set, else ``../shared/fixtures`` next to the checkout.

Missing fixtures never pass silently: with ``CI=true`` every parity test whose fixtures are absent
FAILS; elsewhere it is skipped and the run ends with one loud line saying parity was not checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_FIXTURES = "parity fixtures missing"
FIXTURES_HELP = (
    "the golden fixtures are generated from the authors' code (see README.md, 'Parity "
    "fixtures'); point LIVEACT_FIXTURES at them"
)


def in_ci() -> bool:
    """Whether this run is CI (``CI`` set to true/1/yes, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_fixtures(what: str) -> NoReturn:
    """End a test whose fixtures are absent: a failure in CI, a (summarised) skip elsewhere."""
    message = f"{MISSING_FIXTURES}: {what} (fixture root {fixtures_root()})"
    if in_ci():
        pytest.fail(f"{message}; CI must check parity: {FIXTURES_HELP}", pytrace=False)
    pytest.skip(message)


def fixtures_root() -> Path:
    """The fixture root: ``$LIVEACT_FIXTURES`` or ``<repo>/../shared/fixtures``."""
    env = os.environ.get("LIVEACT_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


def discover_cases(*parts: str) -> list[Path]:
    """All folders holding a ``meta.json`` under ``fixtures_root()/<parts>`` (the folder itself included)."""
    base = fixtures_root().joinpath(*parts)
    if not base.is_dir():
        return []
    return sorted(p.parent for p in base.rglob("meta.json"))


def case_params(*parts: str) -> list:
    """``pytest.param`` list for ``discover_cases``; one ``missing_fixtures`` param when there are none."""
    cases = discover_cases(*parts)
    if not cases:
        where = "/".join(parts)
        return [
            pytest.param(
                None,
                id=f"no-fixtures-{where}",
                marks=pytest.mark.missing_fixtures(f"no cases under {where}/"),
            )
        ]
    root = fixtures_root()
    return [pytest.param(c, id=str(c.relative_to(root))) for c in cases]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "missing_fixtures(what): the parity fixtures this test needs are absent"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("missing_fixtures")
    if marker is not None:
        missing_fixtures(marker.args[0])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One loud line when parity tests were skipped for want of fixtures (CI fails them instead)."""
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and MISSING_FIXTURES in str(r.longrepr[2])
    ]
    if skipped:
        terminalreporter.write_line(
            f"PARITY NOT CHECKED: {len(skipped)} parity test(s) skipped, no fixtures under "
            f"{fixtures_root()}; {FIXTURES_HELP}",
            yellow=True,
            bold=True,
        )


def load_meta(case: Path) -> dict:
    """The parsed ``meta.json`` of a fixture case."""
    return json.loads((case / "meta.json").read_text())


def espeak_missing() -> str | None:
    """Why libespeak-ng cannot speak here (None when it can): tests that synthesise speech skip on it."""
    from liveact.train.speech import EspeakUnavailable, _library

    try:
        _library()
    except EspeakUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture
def espeak_voice() -> None:
    """Skip the test, with the reason, when speech synthesis is unavailable."""
    reason = espeak_missing()
    if reason is not None:
        pytest.skip(f"speech synthesis unavailable: {reason}")
