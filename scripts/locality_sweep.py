"""Choose the runtime's locality width (runtime.core.locality) on two-object clips built from
*training* videos, so the held-out videos stay unseen by the choice (dev tool, needs DAVIS-2016):

    python scripts/locality_sweep.py models/qdmn-light.pth --data ../shared/data/DAVIS2016 \
        --widths 0 0.35 0.5 1 --out models/report/locality_sweep.json

Clips: two pairs of training sequences side by side and two with one pasted, moving, over the
other (the validation recipes, `training/validation.py`), through its `validate`. PyTorch
reference, 2 threads.
"""

from __future__ import annotations

import argparse
import json

import torch

from runtime.cli import path_arg
from training.checkpoint import load_model
from training.reference import ReferenceSegmenter
from training.validation import pasted_video, read_video, side_by_side_video, validate

SIDE_BY_SIDE = (("bmx-trees", "car-shadow"), ("dance-twirl", "kite-surf"))
PASTED = (("paragliding-launch", "scooter-black"), ("horsejump-high", "soapbox"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=path_arg)
    ap.add_argument("--data", required=True, type=path_arg, help="DAVIS-2016 root")
    ap.add_argument("--widths", nargs="+", type=float, default=[0.0, 0.35, 0.5, 1.0])
    ap.add_argument("--size", nargs=2, type=int, default=None, help="H W (default: the checkpoint's)")
    ap.add_argument("--out", type=path_arg, help="JSON with J&F per width and clip")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    videos = ([side_by_side_video(read_video(args.data, a), read_video(args.data, b))
               for a, b in SIDE_BY_SIDE]
              + [pasted_video(read_video(args.data, a), read_video(args.data, b))
                 for a, b in PASTED])
    model, meta = load_model(args.checkpoint)
    size = tuple(args.size) if args.size else tuple(meta["config"]["image_size"])
    results = {}
    for width in args.widths:
        seg = ReferenceSegmenter(model, size=size, locality=width)
        report, _ = validate(model, videos, size, lambda s=seg: s, with_quality=False,
                             progress=True)
        results[str(width)] = {"jf_two_objects": round(report.jf_multi, 4),
                               "per_clip": {k: round(v, 4) for k, v in report.jf.items()}}
        print(f"locality {width}: two-object J&F {report.jf_multi:.3f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": args.checkpoint.name, "size": size,
                                        "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
