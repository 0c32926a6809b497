"""Shared helpers for the runtime tests: a small exported checkpoint and the demo clips
(conftest.demo_root: ONE has one object, TWO two).

Imported by tests/test_runtime*.py and tests/test_reference.py (not a conftest, so the other
layers' fixtures stay independent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, demo_root, script_env

from runtime.media.davis import DavisLayout

SIZE = (128, 224)  # small static size the test graphs are exported at
MAX_OBJECTS = 2
MEMORY_SIZE = 2


def demo_layout() -> DavisLayout:
    return DavisLayout(demo_root())


def davis_clip(seq: str, n: int) -> tuple[list[Path], Path]:
    """First n frame paths and the first mask of a demo clip."""
    layout = demo_layout()
    frames = sorted(layout.frames_dir(seq).glob("*.jpg"))[:n]
    assert frames, f"no frames in {layout.frames_dir(seq)}"
    return frames, layout.annotation(seq, frames[0])


def make_checkpoint(path: Path) -> Path:
    """A light QDMN whose outputs are not degenerate without training.

    Random trunks give ~1e-5 features (all-foreground masks) and an untrained QAM says 0.5, so
    the ImageNet trunk is used when its package is installed, the mask head's bias is shifted so
    roughly half of the pixels are foreground and the QAM head gets random weights: decisions
    and IoU then depend on the numbers.
    """
    import torch

    from training.checkpoint import save_weights
    from training.config import ModelConfig
    from training.model import QDMN

    torch.manual_seed(0)
    cfg = ModelConfig.light()
    try:
        model = QDMN(cfg, pretrained_backbone=True)
        shift = 2.0
    except (RuntimeError, ImportError, OSError):
        model = QDMN(cfg)
        shift = 0.0
    with torch.no_grad():
        model.decoder.pred.bias -= shift
        # An untrained QAM head starts at exactly 0.5 (zero fc2): give it small random weights
        # so scores vary from frame to frame (fc1's activations have a norm ~200).
        torch.nn.init.normal_(model.score.fc2.weight, std=0.02)
    save_weights(model.eval(), path, {"config": {"model": cfg.to_dict()}})
    return path


def export(ckpt: Path, out: Path, size: tuple[int, int] = SIZE, max_objects: int = MAX_OBJECTS,
           memory_size: int = MEMORY_SIZE) -> Path:
    from export.to_onnx import export_checkpoint

    export_checkpoint(ckpt, out, size=size, max_objects=max_objects, memory_size=memory_size)
    return out


def cached_build(request: pytest.FixtureRequest, name: str, key: str,
                 build: Callable[[Path], None], done: str) -> Path:
    """A folder `build` fills once per `key`, kept in pytest's cache (folder `name`) between
    files and runs; `done` is the file whose presence says the build finished. Built in a
    temporary folder and renamed, so parallel runs never see half of one."""
    import shutil

    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is not None:
        root = Path(cache.mkdir(name))
    else:
        root = request.getfixturevalue("tmp_path_factory").getbasetemp() / name
        root.mkdir(exist_ok=True)
    d = root / key[:16]
    if not (d / done).is_file():
        shutil.rmtree(d, ignore_errors=True)  # an incomplete earlier build
        tmp = root / f"{d.name}.tmp-{np.random.default_rng().integers(1 << 30)}"
        tmp.mkdir()
        try:
            build(tmp)
            tmp.rename(d)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return d


def cached_engine(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(checkpoint, exported graphs), built once and kept in pytest's cache between files/runs.

    Keyed by the sources that determine them, so an edit to the model or exporter rebuilds."""
    import hashlib

    import torch

    h = hashlib.sha256(torch.__version__.encode())
    for f in sorted([*(REPO / "training").glob("*.py"), *(REPO / "export").glob("*.py"),
                     REPO / "runtime/core/manifest.py", Path(__file__)]):
        h.update(f.name.encode() + f.read_bytes())
    d = cached_build(request, "qdmn-runtime-engines", h.hexdigest(),
                     lambda tmp: export(make_checkpoint(tmp / "light.pt"), tmp / "graphs"),
                     "graphs/manifest.json")
    return d / "light.pt", d / "graphs"


SHIPPED = REPO / "models" / "qdmn-light.pth"
SHIPPED_SIZE = (240, 432)  # the shipped model's own size (models/README.md)


def shipped_engine(request: pytest.FixtureRequest, max_objects: int = 3) -> Path:
    """The shipped model's graphs at its own size, exported once per checkpoint and kept in
    pytest's cache: for tests whose assertions need a trained model (tracking real objects)."""
    import hashlib

    from runtime.core.manifest import file_sha256

    key = hashlib.sha256(f"{file_sha256(SHIPPED)}-{max_objects}".encode())
    for f in sorted((REPO / "export").glob("*.py")):
        key.update(f.read_bytes())
    return cached_build(request, "qdmn-shipped-engines", key.hexdigest(),
                        lambda tmp: export(SHIPPED, tmp / "graphs", size=SHIPPED_SIZE,
                                           max_objects=max_objects, memory_size=8),
                        "graphs/manifest.json") / "graphs"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """runtime/run.py in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "runtime/run.py", *map(str, args)], cwd=REPO,
                          env=script_env(), capture_output=True, text=True, timeout=300,
                          check=False)


def run_frames(out: Path) -> list[dict]:
    """The per-frame records of OUT/run.json (segment_video returns the other fields only)."""
    return json.loads((out / "run.json").read_text())["frames"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over object ids present in either map (1.0 when both are empty)."""
    ids = sorted(set(np.unique(a)) | set(np.unique(b)) - {0})
    if not ids:
        return 1.0
    return float(np.mean([((a == i) & (b == i)).sum() / max(((a == i) | (b == i)).sum(), 1)
                          for i in ids]))

