"""J&F of `letterbox` vs `stretch` on videos whose aspect ratio differs from the graphs'.

    python benchmarks/aspect_fit.py --engine-dir engines/qdmn-light --data DAVIS_ROOT \\
        [--sequences blackswan,cows,libby] [--aspects 9:16,1:1] [--backend ort-cpu] \\
        [--threads T] [--out results/aspect_fit]

Each sequence is cropped to a fixed window of the given aspect ratio (full height, centred on
the first-frame objects, as a phone would frame them); frames and ground truth are cropped
alike, and the runtime segments the crop with each fit (`runtime.core.geometry`). Scored with the
DAVIS 2017 semi-supervised rules (evaluation/metrics.py). Writes aspect_fit.json and prints a
table; the better fit is `runtime.core.geometry.DEFAULT_FIT`.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from benchmarks.common import BenchmarkError, machine_info, table, write_json
from evaluation.datasets import PROJECT_ROOT
from evaluation.metrics import evaluate_sequence, summarize
from runtime.cli import fail, path_arg
from runtime.core.config import RuntimeConfig, default_threads
from runtime.core.errors import QDMNRuntimeError
from runtime.core.geometry import FITS
from runtime.core.manifest import ManifestError
from runtime.media.davis import DatasetError, read_sequence
from runtime.media.outputs import check_writable_dir
from runtime.media.sources import read_frame
from runtime.options import add_execution_options
from runtime.segmenter import Segmenter

REPO = PROJECT_ROOT


def parse_aspect(text: str) -> tuple[int, int]:
    """'9:16' -> (9, 16) (width:height)."""
    try:
        w, h = (int(x) for x in text.split(":"))
    except ValueError:
        raise BenchmarkError(f"aspect {text!r}: expected W:H, e.g. 9:16") from None
    if w < 1 or h < 1:
        raise BenchmarkError(f"aspect {text!r}: both sides must be >= 1")
    return w, h


def crop_window(first_labels: np.ndarray, aspect: tuple[int, int]) -> tuple[slice, slice]:
    """A full-height (or full-width) window of `aspect`, centred on the first-frame objects."""
    h0, w0 = first_labels.shape
    aw, ah = aspect
    w, h = min(w0, round(h0 * aw / ah)), min(h0, round(w0 * ah / aw))
    ys, xs = np.nonzero(first_labels)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (h0 / 2, w0 / 2)
    top = int(np.clip(round(cy - h / 2), 0, h0 - h))
    left = int(np.clip(round(cx - w / 2), 0, w0 - w))
    return slice(top, top + h), slice(left, left + w)


def segment(seg: Segmenter, frames: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # "frames are WxH, the graphs ...": the point of this test
        warnings.filterwarnings("ignore", message="frames are ")
        return np.stack(list(seg.segment(frames, mask, finite=True)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg)
    p.add_argument("--data", required=True, type=path_arg, help="DAVIS-layout root")
    p.add_argument("--sequences", default="blackswan,cows,libby",
                   help="comma-separated (default: the shipped model's held-out sequences)")
    p.add_argument("--aspects", default="9:16", help="W:H list, e.g. 9:16,1:1")
    add_execution_options(p, ("backend", "threads"), backend_default="ort-cpu")
    p.add_argument("--out", type=path_arg, default=REPO / "results/aspect_fit")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    threads = args.threads or default_threads()
    try:
        check_writable_dir(args.out)
        aspects = [parse_aspect(a) for a in args.aspects.split(",") if a.strip()]
        names = [s.strip() for s in args.sequences.split(",") if s.strip()]
        segs = {fit: Segmenter(args.engine_dir, args.backend,
                               RuntimeConfig(threads=threads, fit=fit)) for fit in FITS}
        rows, per_seq = [], []
        for aw, ah in aspects:
            objects: dict[str, list] = {fit: [] for fit in FITS}
            for name in names:
                seq = read_sequence(args.data, name)
                ys, xs = crop_window(seq.labels[0], (aw, ah))
                frames = [read_frame(f)[ys, xs] for f in seq.frames]
                gt = seq.labels[:, ys, xs]
                for fit, seg in segs.items():
                    t0 = time.perf_counter()
                    pred = segment(seg, frames, gt[0])
                    sec = time.perf_counter() - t0
                    res = evaluate_sequence(name, gt, pred)
                    objects[fit] += res
                    per_seq.append({"aspect": f"{aw}:{ah}", "sequence": name, "fit": fit,
                                    "crop": [ys.start, ys.stop, xs.start, xs.stop],
                                    "frames": len(frames), "seconds": round(sec, 2),
                                    "jf": round(float(np.mean([r.jf_mean for r in res])), 4)})
                    print(f"{aw}:{ah} {name:<16} {fit:<9} J&F {per_seq[-1]['jf']:.3f}",
                          file=sys.stderr, flush=True)
            for fit in FITS:
                g = summarize(objects[fit])
                rows.append({"aspect": f"{aw}:{ah}", "fit": fit, "jf": round(g.jf_mean, 4),
                             "j": round(g.j_mean, 4), "f": round(g.f_mean, 4)})
        manifest = segs[FITS[0]].manifest
        for seg in segs.values():
            seg.close()
    except (BenchmarkError, DatasetError, QDMNRuntimeError, ManifestError, OSError) as e:
        return fail(e)
    print(table(["aspect", "fit", "J&F", "J", "F"],
                [[r["aspect"], r["fit"], r["jf"], r["j"], r["f"]] for r in rows]))
    path = write_json(args.out / "aspect_fit.json", {
        "benchmark": "aspect_fit", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(threads),
        "engine": {"height": manifest.height, "width": manifest.width,
                   "checkpoint_sha256": manifest.checkpoint_sha256},
        "backend": args.backend, "sequences": names, "summary": rows, "per_sequence": per_seq})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
