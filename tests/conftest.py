"""Shared pytest fixtures.

Real data lives in ../shared/data (next to the repository) or $KERNELIGHT_DATA. Tests that need
it use the ``shared_data`` fixture: they skip with a clear reason when it is absent, except when
KERNELIGHT_REQUIRE_DATA=1 (set by .ci/run), where absence is a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path | None:
    env = os.environ.get("KERNELIGHT_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", REPO / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir() and (c / "README.md").exists():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = find_shared_data()
    if root is None:
        msg = "shared data folder ../shared/data not found (set KERNELIGHT_DATA)"
        if os.environ.get("KERNELIGHT_REQUIRE_DATA") == "1":
            pytest.fail(msg + " and KERNELIGHT_REQUIRE_DATA=1")
        pytest.skip(msg)
    return root


def require(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip, or fail under KERNELIGHT_REQUIRE_DATA=1."""
    if not path.exists():
        msg = f"required data file {path} is missing"
        if os.environ.get("KERNELIGHT_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
