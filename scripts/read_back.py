"""Can the model express each object at a given size? With only the annotated frame in memory,
segment that same frame again and report, per object, the share of probability its own plane
holds on its own pixels (1 = read back whole; what is missing went to other objects or the
background).

    python scripts/read_back.py models/qdmn-light.pth --sizes 240x432 480x864 \
        --out models/report/read_back.json

Tracking cannot do better than this: an object the read-back already loses on the frame it was
given (a backpack of 1-2 feature cells on its wearer) is lost from the first propagated frame,
whatever the training clips, and only a larger export or a finer memory read brings it.
Default video: DAVIS 2017's `schoolgirls` (seven objects) from ../shared/data.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import torch

from evaluation.datasets import shared_data
from runtime.cli import fail, path_arg, size_arg
from runtime.core.errors import InputError
from runtime.media.masks import VOID_ID
from training.checkpoint import CheckpointError
from training.reference import ReferenceSegmenter
from training.validation import load_val_videos


def read_back(segmenter: ReferenceSegmenter, frame: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per object id 1..n (void pixels are no object's): the mean of its own probability plane
    over its pixels in `labels`, when `frame` is segmented from a memory of (frame, labels)."""
    segmenter.start(frame, labels)
    segmenter.step(frame)
    prob = segmenter.last_prob
    n = int(labels[labels != VOID_ID].max(initial=0))
    if prob.shape[1:] != labels.shape:  # back to the frame's size, bilinear as the runtime's
        prob = np.stack([cv2.resize(p, labels.shape[::-1], interpolation=cv2.INTER_LINEAR)
                         for p in prob])
    return [float(prob[i][labels == i].mean()) for i in range(1, n + 1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--sizes", nargs="+", type=size_arg, default=[(240, 432), (480, 864)],
                    metavar="HxW")
    ap.add_argument("--data", type=path_arg, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--video", default="schoolgirls", help="a DAVIS 2017 sequence (240p)")
    ap.add_argument("--out", type=path_arg, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    data = args.data or shared_data()
    try:
        video = load_val_videos(data / "DAVIS2016", [], data / "DAVIS2017", [args.video],
                                "240p")[0]
        report = {"checkpoint": str(args.checkpoint), "video": args.video,
                  "pixels": [int((video.labels[0] == i).sum())
                             for i in range(1, video.num_objects + 1)], "sizes": {}}
        for h, w in args.sizes:
            seg = ReferenceSegmenter.from_checkpoint(args.checkpoint, size=(h, w))
            shares = read_back(seg, video.frames[0], video.labels[0])
            report["sizes"][f"{h}x{w}"] = [round(x, 3) for x in shares]
            print(f"{h}x{w}: " + "  ".join(f"{i + 1}:{x:.2f}" for i, x in enumerate(shares)))
    except (InputError, CheckpointError) as e:
        return fail(e)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
