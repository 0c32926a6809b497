"""Training curves of a run (its log.csv and val.csv), as one picture:

    python scripts/curves.py runs/light --out models/qdmn-light-training.png

Left: segmentation and QAM losses and the training IoU, smoothed over `--window` steps.
Right: validation J&F (one and two objects) and the QAM score's correlation with the true IoU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from runtime.cli import path_arg


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV as float columns (blank cells -> NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
            for k in rows[0]}


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) < window:
        return y
    return np.convolve(y, np.ones(window) / window, mode="valid")


def plot_run(run_dir: Path, out: Path, window: int = 50, title: str = "") -> Path:
    log = read_columns(run_dir / "log.csv")
    val = read_columns(run_dir / "val.csv") if (run_dir / "val.csv").is_file() else {}
    if not log:
        raise SystemExit(f"{run_dir / 'log.csv'}: no training rows")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = log["step"]
    s = steps[len(steps) - len(smooth(steps, window)):]
    for key, label in (("seg_loss", "segmentation loss"), ("quality_loss", "QAM loss (own masks)"),
                       ("quality_loss_c", "QAM loss (corrupted masks)"), ("iou", "training IoU")):
        if key in log and np.isfinite(log[key]).any():
            left.plot(s, smooth(log[key], window), label=label)
    left.set_xlabel("step")
    left.set_title(f"training (mean of {window} steps)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    if val:
        for key, label in (("jf_single", "J&F, 1 object"), ("jf_multi", "J&F, 2 objects"),
                           ("qam_pearson", "QAM score vs IoU (Pearson)")):
            if key in val:
                right.plot(val["step"], val[key], marker="o", label=label)
        right.set_ylim(0, 1)
        right.legend(fontsize=8)
    right.set_xlabel("step")
    right.set_title("validation (held-out videos, PyTorch reference)")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=path_arg)
    ap.add_argument("--out", type=path_arg, required=True)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    print(plot_run(args.run_dir, args.out, args.window, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
