"""The absent-object case (dev tool, needs DAVIS-2016): another scene spliced into a
held-out video, and what the memory gate does with the frames where the object is not there.

    python scripts/scene_cut_check.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        [--video blackswan --insert car-shadow --at 20 --frames 15]

Prints, for every frame the policy scored (a memory candidate) and every inserted frame: the
predicted foreground, its IoU with the followed object (none while it is absent) or, on inserted
frames, with the inserted scene's own annotated object, the normalised quality score and
whether the frame entered the memory. PyTorch reference at the checkpoint's
size, runtime defaults.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from evaluation.metrics import jaccard
from runtime.cli import path_arg
from training.data import load_sequence
from training.reference import ReferenceSegmenter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--video", default="blackswan", help="the video to follow (one object)")
    ap.add_argument("--insert", default="car-shadow", help="the scene spliced in")
    ap.add_argument("--at", type=int, default=20, help="frame of --video where it is inserted")
    ap.add_argument("--frames", type=int, default=15, help="frames of --insert spliced in")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    video, other = load_sequence(args.data, args.video), load_sequence(args.data, args.insert)
    if not 0 < args.at < len(video.frames) or args.frames > len(other.frames):
        ap.error(f"--at must be inside {args.video} ({len(video.frames)} frames) and --frames "
                 f"at most {len(other.frames)}")
    cut = slice(args.at, args.at + args.frames)
    frames = [*video.frames[:args.at], *other.frames[:args.frames], *video.frames[args.at:]]
    absent = np.zeros_like(video.labels[0], bool)
    truth = [*(video.labels[:args.at] > 0), *[absent] * args.frames, *(video.labels[args.at:] > 0)]
    seg = ReferenceSegmenter.from_checkpoint(args.checkpoint)
    seg.start(frames[0], truth[0].astype(np.uint8))
    print(f"frame  {'scene':10s} predicted px  IoU (followed / inserted object)  score  memorised")
    for t in range(1, len(frames)):
        pred = seg.step(frames[t], last=t == len(frames) - 1) > 0
        record = seg.last_record
        inserted = cut.start <= t < cut.stop
        if record.score is None and not inserted:
            continue
        target = other.labels[t - cut.start] > 0 if inserted else truth[t]
        iou = f"{float(jaccard(target, pred)):.2f}"
        iou = f"- / {iou}" if inserted else f"{iou} / -"
        score = "-" if record.score is None else f"{record.score:.2f}"
        kept = bool(record.decision and record.decision["accepted"])
        print(f"{t:5d}  {args.insert if inserted else args.video:10.10s} {int(pred.sum()):12d}  "
              f"{iou:>32s} {score:>6s}  {'yes' if kept else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
