"""Segment DAVIS-layout sequences with a segmenter and score them (DAVIS 2017 semi-supervised
rules): the runtime's Segmenter, the PyTorch reference or anything with its start/step API; or
score the masks a runtime CLI already wrote (`evaluate_predictions`).

The first-frame annotation is given to the segmenter; rows are per object (`<seq>_<id>`) as in
the toolkit. Predicted masks `OUT/<seq>/00000.png ...` are frame i = the i-th annotated frame;
their time comes from each folder's run.json.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from evaluation.metrics import (
    EvaluationError,
    GlobalResult,
    ObjectResult,
    evaluate_sequence,
    summarize,
)
from runtime.job import RUN_LOG, frame_png
from runtime.media.davis import RESOLUTION, DatasetError, read_sequence, write_labels
from runtime.media.masks import MaskMode, read_labels
from runtime.media.sources import read_frame


class Segmenter(Protocol):
    """What is evaluated: the runtime's Segmenter or the PyTorch reference.

    frame: (H,W,3) uint8 RGB; mask and the returned labels: (H,W) integer object ids.
    """

    def start(self, frame: np.ndarray, mask: np.ndarray) -> np.ndarray: ...

    def step(self, frame: np.ndarray, *, last: bool = False) -> np.ndarray: ...


SegmenterFactory = Callable[[], Segmenter]


@dataclass(frozen=True)
class SequenceRun:
    """Scores and speed of one sequence."""

    name: str
    objects: tuple[ObjectResult, ...]
    frames: int
    seconds: float  # inside start()/step() only: no decoding, no scoring

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def j_mean(self) -> float:
        return float(np.mean([o.j_stats.mean for o in self.objects]))

    @property
    def f_mean(self) -> float:
        return float(np.mean([o.f_stats.mean for o in self.objects]))

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


@dataclass(frozen=True)
class EvaluationResults:
    """Everything one evaluation produced; `summary()` is the toolkit's global row."""

    sequences: tuple[SequenceRun, ...]

    @property
    def objects(self) -> list[ObjectResult]:
        return [o for s in self.sequences for o in s.objects]

    def summary(self) -> GlobalResult:
        return summarize(self.objects)

    @property
    def fps(self) -> float:
        seconds = sum(s.seconds for s in self.sequences)
        return sum(s.frames for s in self.sequences) / seconds if seconds > 0 else float("nan")


def run_sequence(
    segmenter: Segmenter, frames: Sequence[Path], first_mask: np.ndarray, *, progress: bool = False
) -> tuple[np.ndarray, float]:
    """Segment one video from its first-frame mask.

    first_mask: (H,W) uint8 ids. Returns predicted ids (T,H,W) uint8 and the seconds spent in the
    segmenter.
    """
    preds = np.zeros((len(frames), *first_mask.shape), dtype=np.uint8)
    seconds = 0.0
    for t, path in enumerate(tqdm(frames, leave=False, disable=not progress, unit="frame")):
        image = read_frame(path)
        if image.shape[:2] != first_mask.shape:
            raise EvaluationError(f"{path}: frame {image.shape[:2]} vs mask {first_mask.shape}")
        t0 = time.perf_counter()
        if t == 0:
            out = segmenter.start(image, first_mask)
        else:
            # last=True: nothing follows, so the segmenter may skip memorising the frame.
            out = segmenter.step(image, last=t == len(frames) - 1)
        seconds += time.perf_counter() - t0
        out = np.asarray(out)
        if out.shape != first_mask.shape:
            raise EvaluationError(
                f"{path}: the segmenter returned labels of shape {out.shape}, "
                f"expected {first_mask.shape}"
            )
        preds[t] = out
    return preds, seconds


def evaluate_sequences(
    segmenter_factory: SegmenterFactory,
    root: str | Path,
    sequences: Sequence[str],
    *,
    save_masks: str | Path | None = None,
    progress: bool = True,
    resolution: str = RESOLUTION,
) -> EvaluationResults:
    """Run a segmenter on each sequence and score it with the DAVIS 2017 semi-supervised rules.

    `segmenter_factory()` is called once per sequence; it may hand back the same object each
    time if that object's `start()` resets all video state. With `save_masks`, predictions are
    written as palette PNGs to `save_masks/<seq>/<frame>.png` (the toolkit's results layout).
    """
    runs = []
    bar = tqdm(list(sequences), disable=not progress, unit="seq")
    for name in bar:
        bar.set_postfix_str(name)
        seq = read_sequence(root, name, resolution)
        # Per-frame bars only on a terminal: in logs they would add a line per frame.
        frame_bars = progress and sys.stderr.isatty()
        preds, seconds = run_sequence(
            segmenter_factory(), seq.frames, seq.labels[0], progress=frame_bars
        )
        if save_masks is not None:
            out_dir = Path(save_masks) / name
            out_dir.mkdir(parents=True, exist_ok=True)
            for path, labels in zip(seq.frames, preds):
                write_labels(out_dir / f"{path.stem}.png", labels)
        objects = evaluate_sequence(name, seq.labels, preds)
        runs.append(SequenceRun(name, tuple(objects), len(seq.frames), seconds))
    return EvaluationResults(tuple(runs))


def evaluate_predictions(
    predictions: str | Path, root: str | Path, sequences: Sequence[str]
) -> EvaluationResults:
    """Score the masks a runtime CLI wrote to `predictions/<seq>/` (see the module docstring)."""
    runs = []
    for name in sequences:
        seq = read_sequence(root, name)
        folder = Path(predictions) / name
        files = [folder / frame_png(i) for i in range(len(seq.frames))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise EvaluationError(
                f"{folder}: {len(missing)} of the {len(files)} predicted masks are missing "
                f"(first: {missing[0]})"
            )
        preds = np.stack([read_labels(f, MaskMode.GROUND_TRUTH) for f in files])
        if preds.shape != seq.labels.shape:
            raise EvaluationError(f"{folder}: masks {preds.shape[1:]} vs ground truth "
                                  f"{seq.labels.shape[1:]}")
        try:  # time inside the segmenter, as evaluate_sequences measures it
            log = json.loads((folder / RUN_LOG).read_text())
            seconds = sum(f["ms"]["total"] for f in log["frames"][: len(files)]) / 1e3
        except (OSError, ValueError, KeyError, TypeError):
            seconds = float("nan")
        objects = evaluate_sequence(name, seq.labels, preds)
        runs.append(SequenceRun(name, tuple(objects), len(files), seconds))
    return EvaluationResults(tuple(runs))


def predicted_sequences(predictions: str | Path) -> list[str]:
    """The folders of an output folder that hold a finished video (a run.json)."""
    root = Path(predictions)
    if not root.is_dir():
        raise DatasetError(f"--predictions {root} is not a folder")
    return sorted(p.name for p in root.iterdir() if (p / RUN_LOG).is_file())
