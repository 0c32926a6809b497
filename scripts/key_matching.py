"""Do the memory keys match? For each validation video and object: of the top-k memory positions
(first frame, ground-truth mask) that each of the object's query cells picks by key affinity,
the share on the same object, against chance (the object's share of all memory cells).

    python scripts/key_matching.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        --out models/report/key_matching.json

A share near chance means the read returns an average of the memory, whatever the object, and
the decoder segments by appearance and the previous mask alone.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from runtime.cli import path_arg
from training.checkpoint import load_model
from training.validation import DEFAULT_NAMES, key_match_shares, load_val_videos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    ap.add_argument("--size", nargs=2, type=int, default=(240, 432), metavar=("H", "W"))
    ap.add_argument("--frames", nargs="+", type=int, default=[1, 5, 20])
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--out", type=path_arg, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.checkpoint)[0].eval()
    report = {"checkpoint": str(args.checkpoint), "top_k": args.top_k, "size": list(args.size),
              "videos": {}}
    for video in load_val_videos(args.data, args.names):
        rows = key_match_shares(model, video, tuple(args.size), tuple(args.frames), args.top_k)
        report["videos"][video.name] = rows
        mean = {o: np.mean([r["share"] for r in rows if r["object"] == o]) for o in
                sorted({r["object"] for r in rows})}
        chance = {r["object"]: r["chance"] for r in rows}
        print(video.name, "  ".join(f"object {o}: {s:.2f} (chance {chance[o]:.2f})"
                                    for o, s in mean.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
