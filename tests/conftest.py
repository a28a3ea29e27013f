"""Shared pytest helpers: fixture discovery and tiny-model factories.

Fixture tests never name their fixtures: every folder under ``dit_parity/`` or ``components/<kind>/``
(that folder included) that holds a ``meta.json`` is one case, and every dim comes from its files.
The root is ``$LIVEACT_FIXTURES`` when set, else ``../shared/fixtures`` next to the checkout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    """``pytest.param`` list for ``discover_cases``; a single skipped param when there are none."""
    cases = discover_cases(*parts)
    if not cases:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures under {'/'.join(parts)}"))]
    root = fixtures_root()
    return [pytest.param(c, id=str(c.relative_to(root))) for c in cases]


def load_meta(case: Path) -> dict:
    """The parsed ``meta.json`` of a fixture case."""
    return json.loads((case / "meta.json").read_text())
