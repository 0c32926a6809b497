"""Shared fixtures: the real DAVIS-2016 data (skipped where absent) and tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "data" / "DAVIS2016"


@pytest.fixture(scope="session")
def davis_root() -> Path:
    if not (DAVIS / "JPEGImages" / "480p").is_dir():
        pytest.skip(f"real DAVIS-2016 data not found at {DAVIS}")
    return DAVIS
