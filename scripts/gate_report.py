"""The memory gate on the validation videos, per video: which frames it accepts by their true IoU.

    python scripts/gate_report.py models/qdmn-light.pth --out results/gate

Runs the PyTorch reference (the runtime's loop, default settings) on the held-out one-object
videos, the two-object clips built from them and DAVIS 2017's schoolgirls (seven people), and
writes `gate.json` (per video: frames, the gate score's Pearson correlation with the frame's
mean IoU, the share of frames with IoU < 0.5 it rejects and with IoU > 0.8 it accepts, the mean
IoU of the frames it accepts) and `gate.png` (score against IoU, one colour per video, sigma
drawn). The score is what the gate thresholds (runtime.core.quality.frame_score); every frame is
scored, not only the policy's candidates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from evaluation.datasets import shared_data
from runtime.cli import path_arg
from runtime.media.outputs import OutputLock
from training.checkpoint import load_model
from training.reference import ReferenceSegmenter
from training.validation import DEFAULT_NAMES, GATE_SIGMA, load_val_videos, validate


def per_video(points: list[tuple[float, float]], sigma: float) -> dict[str, float | int | None]:
    arr = np.array(points, np.float64).reshape(-1, 2)
    iou, score = arr[:, 0], arr[:, 1]
    accepted = score >= sigma
    bad, good = iou < 0.5, iou > 0.8
    pearson = (float(np.corrcoef(iou, score)[0, 1])
               if len(arr) > 2 and iou.std() > 1e-9 and score.std() > 1e-9 else None)
    return {"frames": len(arr), "pearson": pearson,
            "frames_iou_below_0.5": int(bad.sum()), "frames_iou_above_0.8": int(good.sum()),
            "reject_bad": float(np.mean(~accepted[bad])) if bad.any() else None,
            "accept_good": float(np.mean(accepted[good])) if good.any() else None,
            "accepted": int(accepted.sum()),
            "accepted_mean_iou": float(iou[accepted].mean()) if accepted.any() else None,
            "mean_iou": float(iou.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--out", type=path_arg, required=True, help="folder for gate.json and gate.png")
    ap.add_argument("--data", type=path_arg, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    data = args.data or shared_data()
    torch.set_num_threads(args.threads)
    lock = OutputLock(args.out)
    try:
        model, meta = load_model(args.checkpoint)
        size = tuple(meta["config"]["image_size"])
        videos = load_val_videos(data / "DAVIS2016", DEFAULT_NAMES, data / "DAVIS2017",
                                 ["schoolgirls"], "240p")
        report, _ = validate(model, videos, size,
                             lambda: ReferenceSegmenter.from_checkpoint(args.checkpoint),
                             progress=True)
        assert report.quality is not None
        points, rows, start = report.quality.gate_points, {}, 0
        for v in videos:
            n = len(v.frames) - 1
            rows[v.name] = {"objects": v.num_objects, "jf": report.jf[v.name],
                            **per_video(points[start:start + n], GATE_SIGMA)}
            start += n
        out = {"checkpoint": str(args.checkpoint), "sigma": GATE_SIGMA,
               "score": report.quality.mode, "pooled_pearson": report.quality.pearson_gate,
               "videos": rows}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gate.json").write_text(json.dumps(out, indent=1))
        _plot(videos, points, args.out / "gate.png")
    finally:
        lock.release()
    print(f"pooled Pearson {out['pooled_pearson']:.3f} (sigma {GATE_SIGMA})")
    for name, r in rows.items():
        print(f"{name:22s} J&F {r['jf']:.3f}  Pearson {r['pearson'] or float('nan'):6.3f}  "
              f"accepted {r['accepted']:3d}/{r['frames']:3d} (mean IoU "
              f"{r['accepted_mean_iou'] or float('nan'):.2f})  rejects IoU<0.5: "
              f"{r['reject_bad'] if r['reject_bad'] is not None else '-'}  accepts IoU>0.8: "
              f"{r['accept_good'] if r['accept_good'] is not None else '-'}")
    print(f"wrote {args.out / 'gate.json'}, {args.out / 'gate.png'}")
    return 0


def _plot(videos: list, points: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    start = 0
    for v in videos:
        n = len(v.frames) - 1
        arr = np.array(points[start:start + n]).reshape(-1, 2)
        ax.scatter(arr[:, 0], arr[:, 1], s=8, label=f"{v.name} ({v.num_objects})")
        start += n
    ax.axhline(GATE_SIGMA, color="k", lw=0.8, ls="--")
    ax.set_xlabel("frame's mean IoU with the truth")
    ax.set_ylabel("gate score (accepted at or above the line)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
