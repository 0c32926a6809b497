"""The TensorRT code checked against the TensorRT 10.13 Python API without TensorRT: mypy reads
the `tensorrt-stubs` .pyi files (fetched by scripts/fetch_trt_stubs.py, as .ci/run does) through
MYPYPATH, so every TensorRT name and call signature the code uses must exist there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

STUBS = REPO / ".cache" / "tensorrt-stubs"
CHECKED = ("runtime/backends/trt.py", "export/build_engines.py")


def test_tensorrt_code_matches_the_stubs():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    if not (STUBS / "tensorrt" / "__init__.pyi").is_file():
        pytest.skip(f"TensorRT stubs not in {STUBS.relative_to(REPO)}: "
                    "python scripts/fetch_trt_stubs.py (.ci/run fetches them)")
    env = {**os.environ, "MYPYPATH": str(STUBS)}
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml",
                        "--cache-dir", str(REPO / ".cache" / "mypy"), *CHECKED], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_stubs_stay_off_the_import_path():
    """Installed, the stubs would make `import tensorrt` succeed without TensorRT."""
    import importlib.util
    from importlib import metadata

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("tensorrt-stubs")
    spec = importlib.util.find_spec("tensorrt")
    assert spec is None or not str(spec.origin or "").startswith(str(STUBS))
