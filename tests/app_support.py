"""Shared by the app's tests (tests/test_app*.py): the shipped model's graphs and a short real
clip under a root folder the app serves."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ONE, REPO
from runtime_support import demo_layout

from runtime.media.masks import MaskMode, read_labels
from runtime.media.sources import read_frame

MODEL = REPO / "models" / "qdmn-light.pth"


def shipped_engine(request: pytest.FixtureRequest) -> Path:
    """The shipped model exported at its own size (240x432) for two objects, as `demo.py` does:
    built once into pytest's cache, keyed by the checkpoint and the code that exports it."""
    h = hashlib.sha256(MODEL.read_bytes())
    for f in sorted([*(REPO / "training").glob("*.py"), *(REPO / "export").glob("*.py"),
                     REPO / "runtime/core/manifest.py"]):
        h.update(f.name.encode() + f.read_bytes())
    root = Path(request.config.cache.mkdir("qdmn-app-engines"))
    d = root / h.hexdigest()[:16]
    if not (d / "manifest.json").is_file():
        from export.to_onnx import export_checkpoint

        shutil.rmtree(d, ignore_errors=True)
        tmp = root / f"{d.name}.tmp-{np.random.default_rng().integers(1 << 30)}"
        try:
            export_checkpoint(MODEL, tmp, max_objects=2)
            tmp.rename(d)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def write_clip(folder: Path, n: int, height: int | None = None) -> list[np.ndarray]:
    """The first `n` frames of the one-object demo clip (real DAVIS frames where they are here)
    as JPEGs in `folder`, resized to `height` rows; returns their ground-truth labels."""
    layout = demo_layout()
    frames = sorted(layout.frames_dir(ONE).glob("*.jpg"))[:n]
    folder.mkdir(parents=True)
    truth = []
    for i, path in enumerate(frames):
        rgb = read_frame(path)
        labels = read_labels(layout.annotation(ONE, path), MaskMode.GROUND_TRUTH)
        if height is not None:
            width = round(rgb.shape[1] * height / rgb.shape[0])
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        truth.append((labels > 0).astype(np.uint8))
    return truth


def box_of(mask: np.ndarray, margin: int = 3) -> list[float]:
    """The box a user draws around an object: its bounding box and a few pixels more."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min() - margin), float(ys.min() - margin), float(xs.max() + 1 + margin),
            float(ys.max() + 1 + margin)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))
