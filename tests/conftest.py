"""Shared fixtures: the real DAVIS clips shipped with the repository (assets/demo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"  # real DAVIS-2016 clips in the DAVIS layout (assets/demo/README.md)


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """A DAVIS-layout root with real frames and annotations: `blackswan` (one object, 50
    frames) and `cows+libby` (two objects, 49 frames)."""
    return DEMO
