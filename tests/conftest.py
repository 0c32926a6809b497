"""Shared fixtures and helpers: the real DAVIS clips shipped with the repository (assets/demo),
and the environment in which the repository's scripts run."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"  # real DAVIS-2016 clips in the DAVIS layout (assets/demo/README.md)


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """A DAVIS-layout root with real frames and annotations: `blackswan` (one object, 50
    frames) and `cows+libby` (two objects, 49 frames)."""
    return DEMO


def installed_from_here() -> bool:
    """True when the installed qdmn-deploy is this checkout (`pip install -e .` here, as CI)."""
    try:
        dist = metadata.distribution("qdmn-deploy")
    except metadata.PackageNotFoundError:
        return False
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    parsed = urlparse(url)
    return parsed.scheme == "file" and Path(unquote(parsed.path)).resolve() == REPO


def script_env() -> dict[str, str]:
    """Environment for running the scripts (`python runtime/run.py`, console scripts) in a
    subprocess. They import the packages through the editable install; where another checkout
    is the installed one, PYTHONPATH puts this checkout's packages first."""
    env = dict(os.environ)
    if not installed_from_here():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def interruptible(script: str, *args: str) -> list[str]:
    """`python script args` with Ctrl-C armed, for a child a test stops with SIGINT. A shell
    without job control starts background commands (`.ci/run &`) with SIGINT ignored; children
    inherit that and Python then never raises KeyboardInterrupt, so the test would see the
    signal ignored. The script runs as `__main__`, exactly as `python script` runs it."""
    boot = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-c", boot, script, *args]
