"""Demo: segment two short clips with the shipped QDMN model on the fastest backend here.

    python demo.py [--data DAVIS_ROOT | --download] [--backend auto|ort-cpu|...] [--out DIR]

The clips (`evaluation.datasets`; the repository ships no video): `blackswan` (one object) and
`cows+libby` (two, side by side), held-out DAVIS sequences the model never trained on, built
from a DAVIS 480p root: `--data`, else the DAVIS-2016 copy beside the project
(`../shared/data/DAVIS2016`), or with `--download` the official DAVIS-2017 480p archive (833
MB, checked against its sha256, unpacked into ~/.cache/qdmn/). With none of these, two clips
generated here (objects cut from photos, moving over another, exact masks), and a line saying
how to get DAVIS.

`--backend auto` picks OpenVINO bf16 on CPUs with native bf16 (AMX or AVX-512 BF16), else ONNX
Runtime CPU (a GPU backend where one is installed).

1. exports the model (`models/qdmn-light.pth`, at its 240x432) to ONNX graphs in
   `engines/qdmn-light/` (once; redone when the checkpoint changes),
2. runs `runtime/run.py` on each clip, writing palette PNGs, an overlay mp4 and run.json under
   `out/demo/<clip>/`,
3. prints FPS and J&F against the clips' ground truth (the same numbers `benchmarks/evaluate.py`
   gives on the clips' folder, which it prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evaluation.datasets import GET_DAVIS, PROJECT_ROOT, cache_dir, demo_root, download_davis2017
from evaluation.metrics import evaluate_sequence, summarize
from runtime import run as run_cli
from runtime.cli import fail, path_arg
from runtime.core.manifest import Manifest, ManifestError, file_sha256
from runtime.media.davis import DatasetError, DavisLayout, list_sequences, read_sequence
from runtime.media.masks import MaskMode, read_labels

REPO = PROJECT_ROOT
MODEL = REPO / "models" / "qdmn-light.pth"  # exported at its own default size
MAX_OBJECTS = 2  # the demo clips hold at most two objects; graphs cost grows with this


def ensure_engines(checkpoint: Path, engine_dir: Path) -> Manifest:
    """Export the checkpoint unless graphs of this very checkpoint are already there."""
    try:
        manifest = Manifest.load(engine_dir)
        if manifest.checkpoint_sha256 == file_sha256(checkpoint):
            return manifest
    except ManifestError:
        pass
    from export.to_onnx import export_checkpoint  # torch is needed only to export

    print(f"exporting {checkpoint.name} -> {engine_dir} ...", flush=True)
    return export_checkpoint(checkpoint, engine_dir, max_objects=MAX_OBJECTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    ap.add_argument("--out", type=path_arg, default=REPO / "out" / "demo",
                    help="output folder (default: out/demo)")
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--data", type=path_arg, help="a DAVIS 480p root (2016 or 2017) holding "
                      "blackswan, cows and libby (default: ../shared/data/DAVIS2016 if present)")
    data.add_argument("--download", action="store_true",
                      help=f"download DAVIS 2017 480p (833 MB) into {cache_dir()} and use it")
    args = ap.parse_args(argv)
    try:
        davis = download_davis2017(cache_dir() / "davis2017") if args.download else args.data
        clips, real = demo_root(davis)
    except DatasetError as e:
        return fail(e)
    if not real:
        print(f"note: {GET_DAVIS}; running on two generated clips instead", file=sys.stderr)

    engines = REPO / "engines" / MODEL.stem
    ensure_engines(MODEL, engines)
    rows = []
    layout = DavisLayout(clips)
    for name in list_sequences(clips, layout.split_file("demo")):
        seq = read_sequence(clips, name)
        out = args.out / name
        frames_dir = seq.frames[0].parent
        first_mask = layout.annotation(name, seq.frames[0])
        code = run_cli.main([
            "--engine-dir", str(engines), "--input", str(frames_dir), "--mask", str(first_mask),
            "--output", str(out), "--overlay", str(args.out / f"{name}.mp4"),
            "--backend", args.backend,
        ])
        if code != 0:
            return code
        preds = np.stack([read_labels(out / f"{f.stem}.png", MaskMode.GROUND_TRUTH)
                          for f in seq.frames])
        objects = evaluate_sequence(name, seq.labels, preds)
        log = json.loads((out / run_cli.RUN_LOG).read_text())
        fps = log["summary"]["fps"]
        rows.append((name, len(objects), len(seq.frames), fps, summarize(objects)))

    print(f"\n{'clip':<14} {'objects':>7} {'frames':>6} {'FPS':>6} {'J&F':>6} {'J':>6} {'F':>6}")
    for name, n_obj, n_frames, fps, g in rows:
        print(f"{name:<14} {n_obj:>7} {n_frames:>6} {fps:>6.1f} {g.jf_mean:>6.3f} "
              f"{g.j_mean:>6.3f} {g.f_mean:>6.3f}")
    print(f"\nmasks, overlays and run.json: {args.out}; the clips: {clips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
