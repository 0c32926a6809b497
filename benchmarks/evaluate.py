"""J&F of the deployed runtime (and optionally the PyTorch reference) on DAVIS-layout data.

    python benchmarks/evaluate.py --engine-dir engines/tiny --data DAVIS_ROOT \
        [--sequences blackswan,cows | --split-file F] [--backend auto|ort-cpu|...] \
        [--reference runs/x/ckpt.pth] --out out/eval
    python benchmarks/evaluate.py --predictions OUT --data ROOT [--sequences ...] --out out/eval

Writes the official toolkit's CSVs (`global_results-<set>.csv`, `per-sequence_results-<set>.csv`,
3 decimals) for the runtime into `--out`, and for the reference into `--out/reference`, plus
`timing-<set>.csv` (segmenter-only frames per second) next to each. Scoring follows the DAVIS
2017 semi-supervised toolkit (see evaluation/metrics.py); the first-frame annotation is given to
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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.metrics import EvaluationError
from evaluation.sequences import (
    EvaluationResults,
    Segmenter,
    evaluate_predictions,
    evaluate_sequences,
    predicted_sequences,
)
from runtime.cli import fail, path_arg
from runtime.media.davis import DatasetError, list_sequences

if TYPE_CHECKING:
    from runtime.core.config import RuntimeConfig
    from runtime.core.manifest import Manifest


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
    from runtime.core.config import RuntimeConfig
    from runtime.options import runtime_settings

    return RuntimeConfig(**runtime_settings(args), threads=args.threads, device=args.device)


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
    from runtime.options import add_execution_options, add_runtime_options

    p = argparse.ArgumentParser(
        description="J&F (DAVIS 2017 semi-supervised rules) of the runtime and the reference.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--engine-dir", type=path_arg, help="exported engine directory")
    what.add_argument("--predictions", type=path_arg,
                      help="score the masks in this output folder of run.py/batch.py instead")
    p.add_argument("--data", required=True, type=path_arg, help="DAVIS-layout root")
    p.add_argument("--resolution", default="480p",
                   help="the root's resolution folder (default 480p; e.g. 240p)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sequences", help="comma-separated sequence names")
    which.add_argument(
        "--split-file", type=path_arg, help="one sequence per line (default: ImageSets/*/val.txt)"
    )
    add_execution_options(p, ("backend", "threads", "device"))
    p.add_argument("--reference", type=path_arg, help="also evaluate this PyTorch checkpoint")
    p.add_argument(
        "--reference-unbounded",
        action="store_true",
        help="reference without eviction (memory grows with the video) instead of the engine's bank",
    )
    p.add_argument("--out", required=True, type=path_arg, help="folder for the CSV files")
    p.add_argument("--set", default=None, help="name in the CSV file names (default: split stem)")
    p.add_argument("--save-masks", action="store_true", help="also write predicted PNGs to --out")
    add_runtime_options(p)
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
            from runtime.media.outputs import OutputLock

            stack.callback(OutputLock(args.out).release)  # a second evaluation into OUT: refused
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
                    resolution=args.resolution,
                )
                paths = write_csvs(results, out_dir, split)
                evaluated[label] = results
                title = f"--- {label}: {len(sequences)} sequences ({split}) ---"
                print(format_table(results, title))
                print("wrote " + ", ".join(str(p) for p in paths) + "\n")
            if "reference" in evaluated:
                print(format_comparison(evaluated["runtime"], evaluated["reference"]))
    except _expected_errors() as e:
        return fail(e)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Settings in range and every folder the CSVs (and masks) go to writable, before the first
    frame runs."""
    from runtime.media.outputs import check_writable_dir

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
        from runtime.core.errors import QDMNRuntimeError
    except ImportError:
        return (*errors, ImportError)
    return (*errors, QDMNRuntimeError, ImportError)


if __name__ == "__main__":
    sys.exit(main())
