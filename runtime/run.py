"""Segment a video from its first-frame mask with exported QDMN graphs.

    python runtime/run.py --engine-dir DIR --input FRAMES_DIR|VIDEO|CAMERA_INDEX|URL \\
        --mask FIRST.png --output OUT [--backend auto|trt|ort-cuda|ort-cpu|openvino|openvino-bf16] \\
        [--memory-size B] [--mem-every K] [--quality-threshold S] [--overlay out.mp4] \\
        [--max-frames N] [--threads T] [--device D] [--spin] [--quiet]

Writes OUT/00000.png... (palette PNGs at the original size, index = object id) and
OUT/run.json (settings, per-frame quality scores, memory decisions, slot contents, per-stage
latency). Everything is validated before the first frame runs; output goes to a temporary
folder moved into place at the end, so a failed run leaves no partial OUT behind. Ctrl-C
stops a live stream and keeps what was segmented (run.json says "interrupted").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import BACKENDS, create_backend
from runtime.config import RuntimeConfig
from runtime.errors import MaskError, QDMNRuntimeError
from runtime.manifest import Manifest, ManifestError
from runtime.masks import object_ids, read_mask
from runtime.palette import OverlayWriter, save_palette_png
from runtime.segmenter import FrameRecord, Segmenter, summarize
from runtime.sources import FrameSource, open_source, with_last

RUN_LOG = "run.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=Path,
                   help="folder with manifest.json and the graphs")
    p.add_argument("--input", required=True,
                   help="folder of frames, video file, camera index or stream URL")
    p.add_argument("--mask", required=True, type=Path, help="first-frame mask (palette PNG)")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--backend", default="auto", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--memory-size", type=int, help="dynamic memory slots (<= the manifest's)")
    p.add_argument("--mem-every", type=int, help="min frames between long-term insertions")
    p.add_argument("--quality-threshold", type=float, help="sigma: min normalised quality")
    p.add_argument("--threads", type=int, help="CPU threads (CPU backends)")
    p.add_argument("--device", type=int, default=0, help="GPU ordinal (GPU backends)")
    p.add_argument("--spin", action="store_true",
                   help="ORT CPU threads busy-wait (only on an idle, dedicated machine)")
    p.add_argument("--overlay", type=Path, help="also write an overlay video (mp4)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class _Fail(Exception):
    """A usage problem found by the CLI itself (message printed as is)."""


def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                             and not (out / RUN_LOG).is_file())):
        raise _Fail(f"output {out} exists and is not an earlier run's output folder "
                    f"(no {RUN_LOG}): choose a new folder or remove it")


def _first_frame(source: FrameSource) -> np.ndarray:
    for frame in source:
        return frame
    raise QDMNRuntimeError(f"{source.description}: no frames")


def _check_mask(mask: np.ndarray, frame: np.ndarray, path: Path, manifest: Manifest) -> None:
    (mh, mw), (fh, fw) = mask.shape, frame.shape[:2]
    if (mh, mw) != (fh, fw) and abs(mw / mh - fw / fh) > 0.01 * fw / fh:
        raise MaskError(f"first mask {path} is {mw}x{mh} but the frames are {fw}x{fh} (another "
                        "aspect ratio): is it the mask of this video?")
    n = len(object_ids(mask))
    if n > manifest.max_objects:
        raise MaskError(f"first mask {path} has {n} objects but the graphs were exported for at "
                        f"most {manifest.max_objects}: re-export with `python export/to_onnx.py "
                        f"CKPT --out DIR --max-objects {n}`")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend not in BACKENDS:
        raise _Fail(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise _Fail(f"--max-frames {args.max_frames}: expected >= 1")
    _check_output(args.output)
    manifest = Manifest.load(args.engine_dir)
    config = RuntimeConfig(memory_size=args.memory_size, mem_every=args.mem_every,
                           quality_threshold=args.quality_threshold, threads=args.threads,
                           device=args.device, spin=args.spin).resolve(manifest)
    mask = read_mask(args.mask)
    source = open_source(args.input)
    finite = not source.live
    frames: Any = source
    if finite:
        first = _first_frame(source)  # decodes one frame: fails early on a corrupt input
        _check_mask(mask, first, args.mask, manifest)
    backend = create_backend(args.backend, manifest, args.engine_dir, config)
    segmenter = Segmenter.from_backend(manifest, backend, config)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.output.name}.partial-", dir=args.output.parent))
    tmp_overlay = tmp / "overlay.mp4"
    writer = OverlayWriter(tmp_overlay, source.fps) if args.overlay else None
    records: list[FrameRecord] = []
    interrupted = False
    try:
        from tqdm import tqdm

        total = source.length
        if args.max_frames is not None:
            total = min(total, args.max_frames) if total else args.max_frames
        bar = tqdm(total=total, unit="frame", disable=args.quiet, dynamic_ncols=True)
        it = iter(frames)
        if args.max_frames is not None:
            it = (f for _, f in zip(range(args.max_frames), it))
        pairs = with_last(it) if finite else ((f, False) for f in it)
        t_start = time.perf_counter()
        try:
            for i, (frame, is_last) in enumerate(pairs):
                if i == 0:
                    if not finite:
                        _check_mask(mask, frame, args.mask, manifest)
                    labels = segmenter.start(frame, mask)
                else:
                    labels = segmenter.step(frame, last=is_last)
                save_palette_png(labels, tmp / f"{i:05d}.png")
                if writer is not None:
                    writer.write(frame, labels)
                rec = segmenter.last_record
                assert rec is not None
                records.append(rec)
                bar.update(1)
                if i > 0:
                    bar.set_postfix(model_fps=f"{1e3 / max(rec.ms['total'], 1e-6):.1f}",
                                    mem=len(segmenter.policy), refresh=False)
        except KeyboardInterrupt:
            if not records:
                raise
            interrupted = True
        finally:
            bar.close()
        if not records:
            raise QDMNRuntimeError(f"{source.description}: no frames")
        wall = time.perf_counter() - t_start
        if writer is not None:
            writer.close()
        log = {
            "input": str(args.input), "mask": str(args.mask), "engine_dir": str(args.engine_dir),
            "backend": backend.describe(), "config": asdict(config),
            "manifest": {k: getattr(manifest, k) for k in (
                "height", "width", "max_objects", "memory_size", "top_k", "precision",
                "checkpoint_sha256")},
            "objects": list(segmenter.object_ids), "first_score": _finite(segmenter.first_score),
            "interrupted": interrupted,
            "summary": {**summarize(records), "wall_s": round(wall, 3),
                        "wall_fps": round(len(records) / wall, 3) if wall > 0 else None},
            "frames": [r.to_dict() for r in records],
        }
        (tmp / RUN_LOG).write_text(json.dumps(log, indent=1))
        if args.overlay:
            args.overlay.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp_overlay), str(args.overlay))
        if args.output.exists():
            shutil.rmtree(args.output)
        tmp.rename(args.output)
        return log
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        segmenter.close()


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def one_line(message: Warning | str, category: type[Warning], *rest: object,
                 **kw: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line  # type: ignore[assignment]
    try:
        log = run(args)
    except (QDMNRuntimeError, ManifestError, _Fail, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    if not args.quiet:
        s = log["summary"]
        print(f"{s['frames']} frames -> {args.output} ({log['backend']['name']}, "
              f"{s['fps']} fps in the model, {s['insertions']} insertions, "
              f"{s['evictions']} evictions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
