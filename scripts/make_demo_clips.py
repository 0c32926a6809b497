"""Build the demo clips shipped under assets/demo from the real DAVIS-2016 data (dev tool), in
the DAVIS layout (JPEGImages/480p/<seq>, Annotations/480p/<seq>) so benchmarks/evaluate.py reads it.

- blackswan: one object, all 50 frames as released (854x480).
- cows+libby: a 2-object video made as the DAVIS-2016 README suggests, two sequences side by
  side at half width (object 1 = cows on the left, object 2 = libby on the right).
Both are validation sequences of the shipped model (never trained on).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from runtime.palette import save_palette_png
from training.data import read_label_png


def copy_single(davis: Path, out: Path, seq: str) -> None:
    for kind in ("JPEGImages", "Annotations"):
        dst = out / kind / "480p" / seq
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted((davis / kind / "480p" / seq).iterdir()):
            if kind == "Annotations":
                save_palette_png(read_label_png(f), dst / f.name)
            else:
                shutil.copy(f, dst / f.name)


def side_by_side(davis: Path, out: Path, left: str, right: str) -> None:
    name = f"{left}+{right}"
    frames_out, masks_out = out / "JPEGImages/480p" / name, out / "Annotations/480p" / name
    frames_out.mkdir(parents=True, exist_ok=True)
    masks_out.mkdir(parents=True, exist_ok=True)
    lf = sorted((davis / "JPEGImages/480p" / left).iterdir())
    rf = sorted((davis / "JPEGImages/480p" / right).iterdir())
    for i in range(min(len(lf), len(rf))):
        halves, labels = [], []
        for obj, seq, f in ((1, left, lf[i]), (2, right, rf[i])):
            img = cv2.imread(str(f))
            h, w = img.shape[:2]
            halves.append(cv2.resize(img, (w // 2, h), interpolation=cv2.INTER_AREA))
            lab = read_label_png(davis / "Annotations/480p" / seq / f"{f.stem}.png")
            labels.append(cv2.resize(lab * obj, (w // 2, h), interpolation=cv2.INTER_NEAREST))
        cv2.imwrite(str(frames_out / f"{i:05d}.jpg"), np.concatenate(halves, 1),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        save_palette_png(np.concatenate(labels, 1), masks_out / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--davis", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets/demo")
    args = ap.parse_args()
    copy_single(args.davis, args.out, "blackswan")
    side_by_side(args.davis, args.out, "cows", "libby")
    (args.out / "ImageSets").mkdir(exist_ok=True)
    (args.out / "ImageSets" / "demo.txt").write_text("blackswan\ncows+libby\n")


if __name__ == "__main__":
    main()
