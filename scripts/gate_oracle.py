"""How much does the memory gate matter? (dev tool, needs DAVIS-2016): validation J&F with the
QAM score replaced by the truth, against the shipped score.

    python scripts/gate_oracle.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        --out models/report/gate_oracle.json

Runs the held-out validation videos (`training.validation`) through the PyTorch reference with
runtime defaults once per gate of `training.gate_oracle` (the model's score, a perfect score,
accept all, reject all) and prints J&F and the frames memorised. If the four agree, no quality
score, however good, changes J&F on these videos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import load_model
from training.gate_oracle import GATES, GatedReference
from training.validation import load_val_videos, validate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", required=True, type=Path, help="DAVIS-2016 root")
    ap.add_argument("--out", type=Path, help="write the results here (JSON)")
    ap.add_argument("--size", type=int, nargs=2, default=(240, 432), metavar=("H", "W"))
    ap.add_argument("--sigma", type=float, default=None,
                    help="the gate's threshold (default: the runtime's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, _ = load_model(args.checkpoint)
    videos = load_val_videos(args.data)
    size = tuple(args.size)
    result: dict[str, Any] = {"checkpoint": args.checkpoint.name, "size": list(size),
                              "sigma": args.sigma}
    for gate in GATES:
        segs = [GatedReference(model, v, gate, size=size, quality_threshold=args.sigma)
                for v in videos]
        order = iter(segs)  # validate asks for one segmenter per video, in the videos' order
        report, _ = validate(model, videos, size, order.__next__, with_quality=False)
        inserted = {v.name: s.insertions for v, s in zip(videos, segs)}
        jf = {name: round(value, 4) for name, value in report.jf.items()}
        result[gate] = {"jf_single": round(report.jf_single, 4),
                        "jf_multi": round(report.jf_multi, 4), "per_video": jf,
                        "insertions": inserted}
        print(f"{gate:>10}: one object {report.jf_single:.3f}, two objects "
              f"{report.jf_multi:.3f}  {jf}, insertions {inserted}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
