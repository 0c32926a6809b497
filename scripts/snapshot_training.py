"""Copy a training run's state into the repo so a later session (maybe on a fresh machine, where
the ignored runs/ folder is gone) can continue it:

    python scripts/snapshot_training.py runs/light models/training

writes light-latest.pth and light-best.pth (FP16 weights + config + step, no optimizer: ~13 MB
each; with the weight average of a run that keeps one, twice that), the run's log.csv, val.csv
and segments.txt, and its curves (curves.png). Continue with
    python training/train.py --config configs/light.yaml --resume-weights models/training/light-latest.pth
(fresh optimizer with a short warm-up; `--resume` is exact when runs/light/checkpoint.pt exists).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from runtime.cli import path_arg
from training.checkpoint import read_checkpoint

FILES = ("log.csv", "val.csv", "segments.txt")


def half_copy(src: Path, dst: Path) -> int:
    """src checkpoint -> dst with FP16 floating tensors (the weights and, in a run that averages
    them, the average) and no optimizer state; returns its step."""
    obj = read_checkpoint(src)
    halves = {key: {k: v.half() if v.is_floating_point() else v for k, v in obj[key].items()}
              for key in ("model", "ema") if key in obj}
    meta = {k: v for k, v in obj.items() if k not in ("model", "ema", "optimizer")}
    tmp = dst.with_suffix(".tmp")
    torch.save({**halves, **meta}, tmp)
    tmp.replace(dst)
    return int(meta.get("step", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=path_arg)
    ap.add_argument("out_dir", type=path_arg)
    ap.add_argument("--name", default="light")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for kind, src in (("latest", "checkpoint.pt"), ("best", "best.pt")):
        if (args.run_dir / src).is_file():
            step = half_copy(args.run_dir / src, args.out_dir / f"{args.name}-{kind}.pth")
            print(f"{kind}: step {step}")
    for name in FILES:
        if (args.run_dir / name).is_file():
            shutil.copy(args.run_dir / name, args.out_dir / name)
    if (args.run_dir / "log.csv").is_file():
        from curves import plot_run  # scripts/curves.py, beside this script

        plot_run(args.run_dir, args.out_dir / "curves.png", title=f"{args.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
