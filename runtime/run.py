"""Segment a video from its first-frame mask with exported QDMN graphs.

    python runtime/run.py --engine-dir DIR --input FRAMES_DIR|VIDEO|CAMERA_INDEX|URL \\
        --mask FIRST.png --output OUT [--backend auto|trt|ort-cuda|ort-cpu|openvino|openvino-bf16] \\
        [--memory-size B] [--mem-every K] [--quality-threshold S] [--overlay out.mp4] \\
        [--max-frames N] [--threads T] [--device D] [--spin] [--fit letterbox|stretch] [--quiet]

Writes OUT/00000.png... (palette PNGs at the original size, index = object id) and
OUT/run.json (settings, per-frame quality scores, memory decisions, slot contents, per-stage
latency, model and end-to-end FPS); the work is `runtime.job.segment_video`. Every input and
output path is checked before the first frame runs; output is staged in a hidden folder next
to OUT and moved in at the end, replacing only the files an earlier run wrote there (others are
kept; a file of the user's that would be overwritten is refused). A failure leaves nothing
behind. Ctrl-C (exit 130) or SIGTERM (exit 143) keeps the frames finished so far, with run.json
saying "interrupted".
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.backends import BACKENDS, create_backend
from runtime.config import RuntimeConfig
from runtime.errors import QDMNRuntimeError
from runtime.job import RUN_LOG, JobInterrupted, check_outputs, segment_video
from runtime.manifest import Manifest, ManifestError
from runtime.masks import read_mask
from runtime.options import add_runtime_options, runtime_settings
from runtime.outputs import Terminated, terminate_as_interrupt
from runtime.palette import OVERLAY_CODECS
from runtime.segmenter import Segmenter
from runtime.sources import open_source


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=Path,
                   help="folder with manifest.json and the graphs")
    p.add_argument("--input", required=True,
                   help="folder of frames, video file, camera index or stream URL")
    p.add_argument("--mask", required=True, type=Path, help="first-frame mask (palette PNG)")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--backend", default="auto", help=f"one of {', '.join(BACKENDS)}")
    add_runtime_options(p)
    p.add_argument("--threads", type=int,
                   help="CPU threads (CPU backends; at most the cores this process may use)")
    p.add_argument("--device", type=int, default=0, help="GPU ordinal (GPU backends)")
    p.add_argument("--spin", action="store_true",
                   help="ORT CPU threads busy-wait (only on an idle, dedicated machine)")
    p.add_argument("--overlay", type=Path,
                   help=f"also write an overlay video ({', '.join(OVERLAY_CODECS)}), outside "
                        "the output folder")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class _Fail(Exception):
    """A usage problem found by the CLI itself (message printed as is)."""


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check everything that can be checked cheaply, build the backend, run the job."""
    if args.backend not in BACKENDS:
        raise _Fail(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    if args.max_frames is not None and args.max_frames < 1:
        raise _Fail(f"--max-frames {args.max_frames}: expected >= 1")
    if args.overlay is not None and _inside(args.overlay, args.output):
        raise _Fail(f"--overlay {args.overlay} is inside the output folder {args.output}, "
                    "which holds the masks (and a name like 00001.png would replace one): "
                    "write the overlay elsewhere")
    check_outputs(args.output, args.overlay)
    manifest = Manifest.load(args.engine_dir)
    config = RuntimeConfig(**runtime_settings(args), threads=args.threads, device=args.device,
                           spin=args.spin).resolve(manifest)
    read_mask(args.mask)
    source = open_source(args.input)
    backend = create_backend(args.backend, manifest, args.engine_dir, config)
    with Segmenter.from_backend(manifest, backend, config) as segmenter:
        return segment_video(segmenter, source, args.mask, args.output, overlay=args.overlay,
                             max_frames=args.max_frames, progress=not args.quiet,
                             extra={"engine_dir": str(args.engine_dir)})


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def one_line(message: Warning | str, category: type[Warning], *rest: object,
                 **kw: object) -> None:
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line  # type: ignore[assignment]
    try:
        with terminate_as_interrupt():
            log = run(args)
    except (QDMNRuntimeError, ManifestError, _Fail, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except JobInterrupted as e:
        n = e.log["summary"]["frames"]
        print(f"interrupted: the {n} finished frames are in {args.output} "
              f"({RUN_LOG} says \"interrupted\")", file=sys.stderr)
        return _interrupt_code(e.cause)
    except KeyboardInterrupt as e:
        print("interrupted: nothing written", file=sys.stderr)
        return _interrupt_code(e)
    if not args.quiet:
        s = log["summary"]
        print(f"{s['frames']} frames -> {args.output} ({log['backend']['name']}, "
              f"{s['fps']} fps in the model, {s['wall_fps']} end to end, "
              f"{s['insertions']} insertions, "
              f"{s['evictions']} evictions)")
    return 0


def _interrupt_code(e: BaseException) -> int:
    """The shell's convention: 128 + the signal number (SIGINT 2, SIGTERM 15)."""
    return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
