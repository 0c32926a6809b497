"""The README's picture: overlays of a few frames of each demo clip, one row per clip.

    python demo.py && python scripts/overlay_grid.py --out docs/images/demo_overlay.jpg

Reads the demo clips' frames (evaluation.datasets.demo_root, as `demo.py` does; --data: the
DAVIS root `demo.py --data` was given) and the masks `demo.py` wrote under out/demo/<clip>/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from evaluation.datasets import DEMO_SPLIT, PROJECT_ROOT, demo_root
from runtime.cli import path_arg
from runtime.media.davis import DavisLayout, list_sequences
from runtime.media.palette import overlay

REPO = PROJECT_ROOT


def clip_row(layout: DavisLayout, masks_dir: Path, name: str, columns: int,
             height: int) -> np.ndarray:
    """`columns` evenly spaced frames of one clip with its predicted masks blended in."""
    frames = sorted(layout.frames_dir(name).glob("*.jpg"))
    picks = np.linspace(0, len(frames) - 1, columns).round().astype(int)
    tiles = []
    for i in picks:
        rgb = np.asarray(Image.open(frames[i]).convert("RGB"))
        mask_path = masks_dir / name / f"{frames[i].stem}.png"
        if not mask_path.is_file():
            raise SystemExit(f"{mask_path}: no predicted mask (run `python demo.py` first)")
        labels = np.asarray(Image.open(mask_path))
        tile = cv2.cvtColor(overlay(rgb, labels), cv2.COLOR_BGR2RGB)  # overlay() gives BGR
        width = round(tile.shape[1] * height / tile.shape[0])
        tile = cv2.resize(tile, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"{name} #{i}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
    return np.concatenate(tiles, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=path_arg, help="the DAVIS root demo.py used (default: its own)")
    ap.add_argument("--masks", type=path_arg, default=REPO / "out" / "demo")
    ap.add_argument("--clips", nargs="+", help="default: the demo's clips")
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--out", type=path_arg, required=True)
    args = ap.parse_args(argv)
    root = demo_root(args.data)[0]
    layout = DavisLayout(root)
    clips = args.clips or list_sequences(root, layout.split_file(DEMO_SPLIT))
    rows = [clip_row(layout, args.masks, c, args.columns, args.height) for c in clips]
    width = min(r.shape[1] for r in rows)
    Image.fromarray(np.concatenate([r[:, :width] for r in rows], 0)).save(args.out, quality=85)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
