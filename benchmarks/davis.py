"""DAVIS-layout reader and palette-PNG writer (torch-free).

Layout: `JPEGImages/480p/<seq>/*.jpg`, `Annotations/480p/<seq>/*.png`,
`ImageSets/<year>/<split>.txt`. Annotations are either DAVIS 2017 palette PNGs (pixel value =
object id, 255 = void) or DAVIS 2016 grayscale PNGs (0 / 255 = background / object).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Frames are decoded and masks written exactly as the runtime's CLI does.
from runtime.palette import davis_palette, save_palette_png
from runtime.sources import read_frame

__all__ = [
    "DatasetError",
    "DavisSequence",
    "davis_palette",
    "list_sequences",
    "read_frame",
    "read_labels",
    "read_sequence",
    "write_labels",
]

RESOLUTION = "480p"
VOID_ID = 255


class DatasetError(FileNotFoundError):
    """A DAVIS root, sequence, split file or annotation is missing or malformed."""


@dataclass(frozen=True)
class DavisSequence:
    """One sequence: frame paths and the ground truth for every frame."""

    name: str
    frames: tuple[Path, ...]
    labels: np.ndarray  # (T,H,W) uint8, 0 = background, k = object k

    @property
    def num_objects(self) -> int:
        """Objects as the toolkit counts them: the largest id in the first annotation."""
        return int(self.labels[0].max())


def read_labels(path: str | Path) -> np.ndarray:
    """An annotation PNG as object ids: (H,W) uint8.

    Palette images give their indices with void (255) -> 0, as the toolkit does. Grayscale
    images holding only 0 and 255 (DAVIS 2016) give {0, 1}; other grayscale images are read as
    ids, again with 255 -> 0.
    """
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1", "I", "I;16"):
            raise DatasetError(f"{path}: annotation mode {im.mode!r} is neither palette nor gray")
        a = np.array(im)
    if a.max(initial=0) > 255:
        raise DatasetError(f"{path}: object ids above 255")
    a = a.astype(np.uint8)
    if im.mode != "P" and np.isin(a, (0, 255)).all():
        return (a == 255).astype(np.uint8)
    a[a == VOID_ID] = 0
    return a


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Save object ids as a DAVIS palette PNG (the runtime's writer). labels: (H,W) in 0..255."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be (H,W) with ids in 0..255, got {labels.shape}")
    save_palette_png(labels.astype(np.uint8), path)


def read_sequence(root: str | Path, seq: str, resolution: str = RESOLUTION) -> DavisSequence:
    """Frame paths and ground-truth ids of `seq`; every frame must be annotated."""
    root = Path(root)
    frames = sorted((root / "JPEGImages" / resolution / seq).glob("*.jpg"))
    masks = sorted((root / "Annotations" / resolution / seq).glob("*.png"))
    if not frames:
        raise DatasetError(f"no frames in {root / 'JPEGImages' / resolution / seq}")
    if [p.stem for p in frames] != [p.stem for p in masks]:
        raise DatasetError(
            f"{seq}: {len(frames)} frames but {len(masks)} annotations with matching names; "
            "semi-supervised evaluation needs every frame annotated"
        )
    labels = [read_labels(p) for p in masks]
    if len({lab.shape for lab in labels}) != 1:
        raise DatasetError(f"{seq}: annotations differ in size")
    return DavisSequence(name=seq, frames=tuple(frames), labels=np.stack(labels))


def list_sequences(root: str | Path, split_file: str | Path | None = None) -> list[str]:
    """Sequence names from a split file, else the first of ImageSets/{2017,2016}/val.txt found,
    else every annotated sequence folder."""
    root = Path(root)
    if split_file is None:
        for year in ("2017", "2016"):
            candidate = root / "ImageSets" / year / "val.txt"
            if candidate.is_file():
                split_file = candidate
                break
    if split_file is not None:
        path = Path(split_file)
        if not path.is_file():
            raise DatasetError(f"split file {path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    ann = root / "Annotations" / RESOLUTION
    if not ann.is_dir():
        raise DatasetError(f"{root} has no Annotations/{RESOLUTION}: not a DAVIS root")
    return sorted(p.name for p in ann.iterdir() if p.is_dir())
