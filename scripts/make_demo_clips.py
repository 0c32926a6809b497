"""Build the demo clips shipped under assets/demo from the real DAVIS-2016 data (dev tool), in
the DAVIS layout (JPEGImages/480p/<seq>, Annotations/480p/<seq>) so benchmarks/evaluate.py reads it.

    python scripts/make_demo_clips.py --davis DAVIS2016_ROOT [--out assets/demo]

- blackswan: one object, all 50 frames as released (854x480).
- cows+libby: a 2-object video made as the DAVIS-2016 README suggests, two sequences side by
  side at half width (object 1 = cows on the left, object 2 = libby on the right).
Both are validation sequences of the shipped model (never trained on).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from evaluation.davis import DavisLayout
from runtime.masks import MaskMode, read_labels
from runtime.palette import save_palette_png


def copy_single(davis: DavisLayout, out: DavisLayout, seq: str) -> None:
    for src, dst in ((davis.frames_dir(seq), out.frames_dir(seq)),
                     (davis.annotations_dir(seq), out.annotations_dir(seq))):
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.suffix == ".png":
                save_palette_png(read_labels(f, MaskMode.GROUND_TRUTH), dst / f.name)
            else:
                shutil.copy(f, dst / f.name)


def side_by_side(davis: DavisLayout, out: DavisLayout, left: str, right: str) -> None:
    name = f"{left}+{right}"
    frames_out, masks_out = out.frames_dir(name), out.annotations_dir(name)
    frames_out.mkdir(parents=True, exist_ok=True)
    masks_out.mkdir(parents=True, exist_ok=True)
    lf = sorted(davis.frames_dir(left).iterdir())
    rf = sorted(davis.frames_dir(right).iterdir())
    for i in range(min(len(lf), len(rf))):
        halves, labels = [], []
        for obj, seq, f in ((1, left, lf[i]), (2, right, rf[i])):
            img = cv2.imread(str(f))
            h, w = img.shape[:2]
            halves.append(cv2.resize(img, (w // 2, h), interpolation=cv2.INTER_AREA))
            lab = read_labels(davis.annotation(seq, f), MaskMode.GROUND_TRUTH)
            labels.append(cv2.resize(lab * obj, (w // 2, h), interpolation=cv2.INTER_NEAREST))
        cv2.imwrite(str(frames_out / f"{i:05d}.jpg"), np.concatenate(halves, 1),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        save_palette_png(np.concatenate(labels, 1), masks_out / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--davis", type=Path, required=True, help="DAVIS-2016 root (DAVIS layout)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets/demo")
    args = ap.parse_args()
    davis, out = DavisLayout(args.davis), DavisLayout(args.out)
    copy_single(davis, out, "blackswan")
    side_by_side(davis, out, "cows", "libby")
    out.split_file("demo").parent.mkdir(exist_ok=True)
    out.split_file("demo").write_text("blackswan\ncows+libby\n")


if __name__ == "__main__":
    main()
