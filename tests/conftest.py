"""Shared fixtures and helpers: the demo clips (built from the DAVIS data beside the project, or
generated where it is absent; the repository ships no dataset files), and the environment in
which the repository's scripts run."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlparse

import pytest

from evaluation import datasets

REPO = Path(__file__).resolve().parents[1]
REAL_FRAMES = datasets.find_davis() is not None  # ../shared/data/DAVIS2016 is here
# The demo root's clips: one object and two objects (blackswan, cows+libby from real DAVIS
# frames; else two generated clips of the same lengths and frame size)
ONE, TWO = ((datasets.ONE, datasets.TWO) if REAL_FRAMES
            else (datasets.GENERATED_ONE, datasets.GENERATED_TWO))


@functools.cache
def demo_root() -> Path:
    """The demo clips in the DAVIS layout (evaluation.datasets.demo_root, built once into the
    user's cache): 854x480, 50 frames of ONE, 49 of TWO."""
    return datasets.demo_root()[0]


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (the research tools live beside the scripts using them)."""
    spec = importlib.util.spec_from_file_location(f"scripts.{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_real_frames() -> None:
    """Skip a test that is about real video (a trained model's accuracy) where only the
    generated clips are here."""
    if not REAL_FRAMES:
        pytest.skip(f"needs real DAVIS frames: {datasets.shared_data() / 'DAVIS2016'} is absent")


@pytest.fixture(scope="session")
def davis_root() -> Path:
    """The demo root (see `demo_root`)."""
    return demo_root()


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


def wait_for_file(proc: subprocess.Popen, folder: Path, pattern: str,
                  ready: Callable[[Path], bool] = Path.exists) -> None:
    """Poll, for up to ~5 minutes, until `folder` holds a file matching `pattern` (and `ready`
    says so of it) while `proc` still runs (the moment a test signals it or starts a rival);
    fail if it exits first."""
    for _ in range(3000):
        if any(ready(p) for p in folder.glob(pattern)):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)  # waits on the process, returns at once if it exited
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
    pytest.fail(f"nothing matching {pattern} appeared in {folder}")


def signal_when_written(script: str, args: list[str], folder: Path, pattern: str,
                        signum: int, ready: Callable[[Path], bool] = Path.exists
                        ) -> tuple[int, str]:
    """Run `python script args` (interruptible), send it `signum` once `folder` holds a file
    matching `pattern` (and `ready`); its exit status and stderr."""
    proc = subprocess.Popen(interruptible(script, *args), cwd=REPO, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(proc, folder, pattern, ready)
        return interrupt(proc, signum)
    finally:
        proc.kill()


def interrupt(proc: subprocess.Popen, signum: int, timeout: float = 120) -> tuple[int, str]:
    """Send an `interruptible` child `signum`; its exit status and stderr once it exits. One
    that does not exit in time fails the test with its threads' stacks (faulthandler on
    SIGUSR1, armed by `interruptible`)."""
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running {timeout:.0f} s after signal {signum}; its stacks:\n{err}")
    return proc.returncode, err


def interruptible(script: str, *args: str) -> list[str]:
    """`python script args` with Ctrl-C armed, for a child a test stops with SIGINT. A shell
    without job control starts background commands (`.ci/run &`) with SIGINT ignored; children
    inherit that and Python then never raises KeyboardInterrupt, so the test would see the
    signal ignored. The script runs as `__main__`, exactly as `python script` runs it."""
    boot = ("import faulthandler, runpy, signal, sys; "
            "signal.signal(signal.SIGINT, signal.default_int_handler); "
            "faulthandler.register(signal.SIGUSR1, all_threads=True); "  # see `interrupt`
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-c", boot, script, *args]
