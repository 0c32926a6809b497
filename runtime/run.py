"""Segment a video from its first-frame mask (or masks on any frames) with exported QDMN graphs.

    python runtime/run.py --engine-dir DIR --input FRAMES_DIR|VIDEO|CAMERA_INDEX|URL \\
        (--mask FIRST.png | --masks MASKS_DIR) --output OUT [--backend auto|trt|ort-cuda|ort-cpu|openvino|openvino-bf16] \\
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.backends import BACKENDS, create_backend
from runtime.cli import fail, path_arg, text_arg, warnings_as_lines
from runtime.core.errors import QDMNRuntimeError
from runtime.core.manifest import Manifest
from runtime.job import RUN_LOG, JobInterrupted, check_apart, check_outputs, segment_video
from runtime.media.given import read_given_masks
from runtime.media.masks import read_mask
from runtime.media.outputs import ignore_interrupts, interrupt_exit_code, terminate_as_interrupt
from runtime.media.palette import OVERLAY_CODECS
from runtime.media.sources import open_source
from runtime.options import add_execution_options, add_runtime_options, runtime_config
from runtime.segmenter import Segmenter


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg,
                   help="folder with manifest.json and the graphs")
    p.add_argument("--input", required=True, type=text_arg,
                   help="folder of frames, video file, camera index or stream URL")
    p.add_argument("--mask", type=path_arg,
                   help="first-frame mask: a palette PNG (index = object id, DAVIS 2017), a "
                        "0/255 grayscale PNG (DAVIS 2016) or an RGB PNG in DAVIS colours")
    p.add_argument("--masks", type=path_arg,
                   help="folder of masks on any frames, <frame>.png (a frame file's name, or "
                        "a video's frame number: 00010.png), YouTube-VOS/DAVIS layout: each "
                        "decides the objects it marks on its frame (objects may first appear "
                        "there) and is kept as a reference; propagation starts at the first")
    p.add_argument("--output", required=True, type=path_arg, help="output folder")
    add_execution_options(p)
    add_runtime_options(p)
    p.add_argument("--overlay", type=path_arg,
                   help=f"also write an overlay video ({', '.join(OVERLAY_CODECS)}), outside "
                        "the output folder")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar, no summary line (warnings and errors still print)")
    args = p.parse_args(argv)
    if args.mask is None and args.masks is None:
        p.error("give the first frame's mask (--mask FILE), masks on some frames "
                "(--masks DIR), or both")
    return args


class _Fail(ValueError):
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
    check_apart(args.output, args.overlay, {"--input": args.input, "--engine-dir":
                                            args.engine_dir, "--mask": args.mask,
                                            "--masks": args.masks})
    check_outputs(args.output, args.overlay)
    manifest = Manifest.load(args.engine_dir)
    config = runtime_config(args, manifest)
    if args.mask is not None:
        read_mask(args.mask)
    source = open_source(args.input)
    if args.masks is not None:
        read_given_masks(args.masks, source)
    backend = create_backend(args.backend, manifest, args.engine_dir, config)
    with Segmenter.from_backend(manifest, backend, config) as segmenter:
        return segment_video(segmenter, source, args.mask, args.output, masks=args.masks,
                             overlay=args.overlay,
                             max_frames=args.max_frames, progress=not args.quiet,
                             extra={"engine_dir": str(args.engine_dir)})


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    warnings_as_lines()
    try:
        with terminate_as_interrupt():
            log = run(args)
    except (QDMNRuntimeError, _Fail, OSError) as e:
        return fail(e)
    except JobInterrupted as e:
        n = e.log["summary"]["frames"]
        print(f"interrupted: the {n} finished frames are in {args.output} "
              f"({RUN_LOG} says \"interrupted\")", file=sys.stderr)
        return interrupt_exit_code(e.cause)
    except KeyboardInterrupt as e:
        print("interrupted: nothing written", file=sys.stderr)
        return interrupt_exit_code(e)
    if argv is None:  # this process is run.py's alone
        ignore_interrupts()
    if not args.quiet:
        s = log["summary"]
        print(f"{s['frames']} frames -> {args.output} ({log['backend']['name']}, "
              f"{s['fps']} fps in the model, {s['wall_fps']} end to end, "
              f"{s['insertions']} insertions, "
              f"{s['evictions']} evictions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
