"""Validation report of a trained checkpoint (dev tool, needs the DAVIS-2016 copy):

    python scripts/model_report.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        --out models/report [--sizes 240x432 480x864] [--threads 2]

For each size the checkpoint is exported (ONNX, 2 objects) and run by the runtime on ONNX
Runtime CPU over the held-out videos (one object; two objects side by side and copy-paste);
the PyTorch reference runs at the first size. Writes report.json (J&F per video, one- and
two-object means, runtime vs reference), the QAM score-vs-IoU points (CSV) and scatter plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from evaluation.datasets import PROJECT_ROOT
from runtime.cli import path_arg, size_arg
from runtime.core.config import RuntimeConfig
from runtime.core.locality import DEFAULT_LOCALITY
from runtime.core.manifest import Manifest, ManifestError, file_sha256
from runtime.segmenter import Segmenter
from training.checkpoint import load_model
from training.reference import ReferenceSegmenter
from training.validation import (
    DEFAULT_NAMES,
    GATE_SIGMA,
    QualityStats,
    ValReport,
    load_val_videos,
    validate,
    write_quality_points,
)

REPO = PROJECT_ROOT


def export(ckpt: Path, size: tuple[int, int], out: Path) -> Path:
    """Export unless `out` holds graphs of this very checkpoint at this size (a changed
    checkpoint under the same name once reported the old model's runtime numbers)."""
    try:
        m = Manifest.load(out)
        fresh = m.checkpoint_sha256 == file_sha256(ckpt) and (m.height, m.width) == tuple(size)
    except ManifestError:
        fresh = False
    if not fresh:
        subprocess.run([sys.executable, str(REPO / "export/to_onnx.py"), str(ckpt), "--out",
                        str(out), "--size", str(size[0]), str(size[1]), "--max-objects", "2"],
                       check=True)
    return out


def summary(report: ValReport) -> dict[str, object]:
    out: dict[str, object] = {"jf_single": round(report.jf_single, 4),
                              "jf_multi": round(report.jf_multi, 4),
                              "jf_per_video": {k: round(v, 4) for k, v in report.jf.items()}}
    q = report.quality
    if q is not None:
        out["qam"] = {"pearson": round(q.pearson, 4),
                      "pearson_within_video": round(q.pearson_within, 4),
                      "quality_score": q.mode,
                      "pearson_quality_score": round(q.pearson_score, 4),
                      "pearson_gate_score": round(q.pearson_gate, 4),
                      "gate_rejects_iou_below_0.5":
                      round(q.reject_bad, 4), "gate_accepts_iou_above_0.8": round(q.accept_good, 4),
                      "frames": q.n_frames, "sigma": GATE_SIGMA}
    return out


def scatter(stats: QualityStats, path: Path, title: str) -> None:
    """Per object-frame, the QAM head's score and the gate's (stats.mode) against the IoU; per
    frame, the gate's final score (/ the first frame's) against the mean IoU, with sigma."""
    pts, gate = np.array(stats.points), np.array(stats.gate_points)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5), dpi=110)
    for ax, col, name, r in ((axes[0], 1, "QAM score", stats.pearson),
                             (axes[1], 2, f"gate's object score ({stats.mode})",
                              stats.pearson_score)):
        ax.scatter(pts[:, 0], pts[:, col], s=6, alpha=0.5)
        ax.set_xlabel("true IoU of the predicted mask")
        ax.set_ylabel(name)
        ax.set_title(f"per object-frame: r = {r:.2f}")
    ax = axes[2]
    ax.scatter(gate[:, 0], gate[:, 1], s=6, alpha=0.5)
    ax.axhline(GATE_SIGMA, color="r", lw=0.8)
    ax.set_xlabel("mean true IoU of the frame's masks")
    ax.set_ylabel("gate's score / the first frame's")
    ax.set_title(f"per frame: r = {stats.pearson_gate:.2f}; sigma {GATE_SIGMA} rejects "
                 f"{stats.reject_bad:.0%} of IoU < 0.5,\naccepts {stats.accept_good:.0%} of "
                 "IoU > 0.8", fontsize=9)
    for ax in axes:
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(bottom=-0.02)
    fig.suptitle(f"{title}: {len(pts)} object-frames, {len(gate)} frames")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    ap.add_argument("--out", required=True, type=path_arg)
    ap.add_argument("--sizes", nargs="+", type=size_arg, default=[(240, 432), (480, 864)],
                    metavar="HxW")
    ap.add_argument("--engines", type=path_arg, default=REPO / "engines" / "report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--locality", type=float, default=DEFAULT_LOCALITY,
                    help="the runtime's locality prior (runtime.core.locality; 0: off)")
    args = ap.parse_args(argv)
    sizes = args.sizes
    names = [f"{h}x{w}" for h, w in sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    videos = load_val_videos(args.data, args.names)
    model, _ = load_model(args.checkpoint)
    result: dict[str, object] = {"checkpoint": args.checkpoint.name, "videos": [v.name for v in videos],
                                 "locality": args.locality}

    ref = ReferenceSegmenter(model, size=sizes[0], threads=args.threads, locality=args.locality)
    report, _ = validate(model, videos, sizes[0], lambda: ref, progress=True)
    result[f"reference_{names[0]}"] = summary(report)
    assert report.quality is not None
    write_quality_points(report.quality, args.out / "qam_points.csv")
    scatter(report.quality, args.out / "qam_vs_iou.png",
            f"QAM score vs true IoU, held-out videos ({names[0]})")

    for size, name in zip(sizes, names):
        engine = export(args.checkpoint, size, args.engines / f"{args.checkpoint.stem}-{name}")
        seg = Segmenter(engine, backend="ort-cpu", config=RuntimeConfig(locality=args.locality))
        try:
            rep, _ = validate(model, videos, size, lambda s=seg: s, with_quality=False,
                              progress=True)
        finally:
            seg.close()
        result[f"runtime_ort_cpu_{name}"] = summary(rep)
    (args.out / "report.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
