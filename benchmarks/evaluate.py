"""J&F of the deployed runtime (and optionally the PyTorch reference) on DAVIS-layout data.

    python benchmarks/evaluate.py --engine-dir engines/tiny --data ../shared/data/DAVIS2016 \
        [--sequences blackswan,cows | --split-file F] [--backend onnxruntime] \
        [--reference runs/x/ckpt.pth] --out out/eval
    python benchmarks/evaluate.py --predictions OUT --data ROOT [--sequences ...] --out out/eval

Writes the official toolkit's CSVs (`global_results-<set>.csv`, `per-sequence_results-<set>.csv`,
3 decimals) for the runtime into `--out`, and for the reference into `--out/reference`, plus
`timing-<set>.csv` (segmenter-only frames per second) next to each. Scoring follows the DAVIS
2017 semi-supervised toolkit (see benchmarks/metrics.py); the first-frame annotation is given to
the segmenter, and rows are per object (`<seq>_<id>`) as in the toolkit. `--predictions` scores
masks already written by `runtime/run.py` or `runtime/batch.py` (`OUT/<seq>/00000.png ...`,
frame i = the i-th annotated frame) instead of running a segmenter; their timing comes from each
folder's run.json. Its default sequences are the folders of OUT that hold a run.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/evaluate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.davis import (
    DatasetError,
    list_sequences,
    read_frame,
    read_labels,
    read_sequence,
    write_labels,
)
from benchmarks.metrics import (
    EvaluationError,
    GlobalResult,
    ObjectResult,
    evaluate_sequence,
    summarize,
)

if TYPE_CHECKING:
    from runtime.config import RuntimeConfig
    from runtime.manifest import Manifest


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
        seq = read_sequence(root, name)
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
    from runtime.job import RUN_LOG, frame_png

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
        preds = np.stack([read_labels(f) for f in files])
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
    from runtime.job import RUN_LOG

    root = Path(predictions)
    if not root.is_dir():
        raise DatasetError(f"--predictions {root} is not a folder")
    return sorted(p.name for p in root.iterdir() if (p / RUN_LOG).is_file())


def write_csvs(results: EvaluationResults, out_dir: str | Path, split: str = "val") -> list[Path]:
    """Write the toolkit's global and per-object CSVs plus a timing CSV; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row = results.summary().as_row()
    global_path = out / f"global_results-{split}.csv"
    _write_csv(global_path, list(row), [[_f3(v) for v in row.values()]])
    per_seq_path = out / f"per-sequence_results-{split}.csv"
    _write_csv(
        per_seq_path,
        ["Sequence", "J-Mean", "F-Mean"],
        [[o.name, _f3(o.j_stats.mean), _f3(o.f_stats.mean)] for o in results.objects],
    )
    timing_path = out / f"timing-{split}.csv"
    _write_csv(
        timing_path,
        ["Sequence", "Frames", "Seconds", "FPS"],
        [[s.name, s.frames, _f3(s.seconds), _f3(s.fps)] for s in results.sequences],
    )
    return [global_path, per_seq_path, timing_path]


def format_table(results: EvaluationResults, title: str) -> str:
    """Per-sequence J&F / J / F / FPS rows and the global row, as plain text."""
    lines = [f"{title}", f"{'Sequence':<24}{'J&F':>8}{'J':>8}{'F':>8}{'FPS':>9}"]
    for s in results.sequences:
        lines.append(f"{s.name:<24}{s.jf_mean:8.3f}{s.j_mean:8.3f}{s.f_mean:8.3f}{s.fps:9.1f}")
    g = results.summary()
    lines.append(
        f"{'Mean (over objects)':<24}{g.jf_mean:8.3f}{g.j_mean:8.3f}{g.f_mean:8.3f}"
        f"{results.fps:9.1f}"
    )
    lines.append("  ".join(f"{k} {v:.3f}" for k, v in g.as_row().items()))
    return "\n".join(lines)


def format_comparison(runtime: EvaluationResults, reference: EvaluationResults) -> str:
    """J&F of runtime vs reference per sequence, and the difference."""
    lines = [f"{'Sequence':<24}{'runtime':>9}{'reference':>11}{'delta':>9}"]
    for a, b in zip(runtime.sequences, reference.sequences):
        lines.append(f"{a.name:<24}{a.jf_mean:9.3f}{b.jf_mean:11.3f}{a.jf_mean - b.jf_mean:+9.3f}")
    ga, gb = runtime.summary().jf_mean, reference.summary().jf_mean
    lines.append(f"{'J&F-Mean':<24}{ga:9.3f}{gb:11.3f}{ga - gb:+9.3f}")
    return "\n".join(lines)


def _f3(v: float) -> str:
    return f"{v:.3f}"


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# --- CLI --------------------------------------------------------------------------------------


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    from runtime.config import RuntimeConfig

    return RuntimeConfig(
        memory_size=args.memory_size,
        mem_every=args.mem_every,
        quality_threshold=args.quality_threshold,
        threads=args.threads,
        device=args.device,
        fit=args.fit,
    )


def build_runtime(args: argparse.Namespace) -> Segmenter:
    """The deployed runtime on the exported engine directory."""
    from runtime.segmenter import Segmenter as RuntimeSegmenter

    return RuntimeSegmenter(args.engine_dir, backend=args.backend, config=runtime_config(args))


def build_reference(args: argparse.Namespace, manifest: Manifest) -> Segmenter:
    """The PyTorch reference with the engine's size, object count, bank and policy settings
    (same decisions as the runtime up to numerics), or with an unbounded bank."""
    from training.reference import reference_segmenter

    if not args.reference_unbounded:
        return reference_segmenter(args.reference, manifest=manifest, config=runtime_config(args))
    config = dataclasses.replace(
        runtime_config(args),
        memory_size=None,
        mem_every=args.mem_every or manifest.mem_every,
        quality_threshold=(
            manifest.quality_threshold if args.quality_threshold is None else args.quality_threshold
        ),
    )
    return reference_segmenter(
        args.reference,
        size=(manifest.height, manifest.width),
        max_objects=manifest.max_objects,
        unbounded=True,
        config=config,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from runtime.backends import BACKENDS
    from runtime.geometry import FITS

    p = argparse.ArgumentParser(
        description="J&F (DAVIS 2017 semi-supervised rules) of the runtime and the reference.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--engine-dir", type=Path, help="exported engine directory")
    what.add_argument("--predictions", type=Path,
                      help="score the masks in this output folder of run.py/batch.py instead")
    p.add_argument("--data", required=True, type=Path, help="DAVIS-layout root")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sequences", help="comma-separated sequence names")
    which.add_argument(
        "--split-file", type=Path, help="one sequence per line (default: ImageSets/*/val.txt)"
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="runtime backend")
    p.add_argument("--reference", type=Path, help="also evaluate this PyTorch checkpoint")
    p.add_argument(
        "--reference-unbounded",
        action="store_true",
        help="reference without eviction (memory grows with the video) instead of the engine's bank",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the CSV files")
    p.add_argument("--set", default=None, help="name in the CSV file names (default: split stem)")
    p.add_argument("--save-masks", action="store_true", help="also write predicted PNGs to --out")
    p.add_argument("--memory-size", type=int, default=None, help="dynamic slots used (<= engine's)")
    p.add_argument("--mem-every", type=int, default=None)
    p.add_argument("--quality-threshold", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads of CPU backends")
    p.add_argument("--device", type=int, default=0, help="GPU ordinal for GPU backends")
    p.add_argument("--fit", choices=FITS, default=None,
                   help="frames of another aspect ratio than the engine's (runtime.geometry)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.reference_unbounded and args.reference is None:
        p.error("--reference-unbounded needs --reference")
    if args.predictions is not None and (args.reference or args.save_masks):
        p.error("--predictions scores existing masks: --reference/--save-masks need --engine-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    split = args.set or (args.split_file.stem if args.split_file else "val")
    try:
        with contextlib.ExitStack() as stack:
            _check_args(args)
            if args.sequences:
                sequences = [s.strip() for s in args.sequences.split(",") if s.strip()]
            elif args.predictions is not None and args.split_file is None:
                sequences = predicted_sequences(args.predictions)
            else:
                sequences = list_sequences(args.data, args.split_file)
            if not sequences:
                raise DatasetError("no sequences to evaluate")
            if args.predictions is not None:
                results = evaluate_predictions(args.predictions, args.data, sequences)
                paths = write_csvs(results, args.out, split)
                print(format_table(results, f"--- {args.predictions}: {len(sequences)} "
                                            f"sequences ({split}) ---"))
                print("wrote " + ", ".join(str(p) for p in paths))
                return 0
            runtime = _closing(stack, build_runtime(args))
            targets: list[tuple[str, Path, Segmenter]] = [("runtime", args.out, runtime)]
            if args.reference is not None:
                reference = _closing(stack, build_reference(args, runtime.manifest))
                _warn_if_other_checkpoint(runtime, reference)
                targets.append(("reference", args.out / "reference", reference))
            evaluated = {}
            for label, out_dir, segmenter in targets:
                results = evaluate_sequences(
                    lambda s=segmenter: s,  # start() resets the video state
                    args.data,
                    sequences,
                    save_masks=out_dir / "masks" if args.save_masks else None,
                    progress=not args.no_progress,
                )
                paths = write_csvs(results, out_dir, split)
                evaluated[label] = results
                title = f"--- {label}: {len(sequences)} sequences ({split}) ---"
                print(format_table(results, title))
                print("wrote " + ", ".join(str(p) for p in paths) + "\n")
            if "reference" in evaluated:
                print(format_comparison(evaluated["runtime"], evaluated["reference"]))
    except _expected_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Settings in range and every folder the CSVs (and masks) go to writable, before the first
    frame runs."""
    from runtime.outputs import check_writable_dir

    runtime_config(args)  # RuntimeConfig checks its ranges (RuntimeConfigError)
    check_writable_dir(args.out)
    if args.reference is not None:
        check_writable_dir(args.out / "reference")


def _closing(stack: contextlib.ExitStack, segmenter: Segmenter) -> Segmenter:
    close = getattr(segmenter, "close", None)
    if close is not None:
        stack.callback(close)
    return segmenter


def _warn_if_other_checkpoint(runtime: Segmenter, reference: Segmenter) -> None:
    a = getattr(getattr(runtime, "manifest", None), "checkpoint_sha256", "")
    b = getattr(getattr(reference, "manifest", None), "checkpoint_sha256", "")
    if a and b and a != b:
        print(
            "warning: the engine was exported from a different checkpoint than --reference "
            f"(sha256 {a[:12]} vs {b[:12]})",
            file=sys.stderr,
        )


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors the CLI reports as a message: bad data, bad engines, missing backends."""
    errors: tuple[type[BaseException], ...] = (DatasetError, EvaluationError, ValueError, OSError)
    try:
        from runtime.errors import QDMNRuntimeError
    except ImportError:
        return (*errors, ImportError)
    return (*errors, QDMNRuntimeError, ImportError)


if __name__ == "__main__":
    sys.exit(main())
