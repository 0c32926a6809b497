"""The DAVIS dataset layout, its sequences with ground truth, and palette-PNG writing.

Layout: `JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png`,
`ImageSets/<year>/<split>.txt`. Annotations are read by the runtime's one mask reader
(`runtime.media.masks.read_labels`, ground-truth mode: palette indices with void 255 -> 0, or DAVIS
2016 grayscale 0 / 255 -> {0, 1}).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.core.errors import InputError
from runtime.media.masks import MaskMode, read_labels
from runtime.media.palette import save_palette_png
from runtime.media.sources import frame_files

RESOLUTION = "480p"


class DatasetError(InputError, ValueError):
    """A DAVIS root, sequence, split file or annotation is missing or malformed."""


@dataclass(frozen=True)
class DavisLayout:
    """Where a DAVIS-layout dataset keeps its frames, annotations and splits."""

    root: Path
    resolution: str = RESOLUTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def frames_root(self) -> Path:
        return self.root / "JPEGImages" / self.resolution

    @property
    def annotations_root(self) -> Path:
        return self.root / "Annotations" / self.resolution

    def frames_dir(self, seq: str) -> Path:
        return self.frames_root / seq

    def annotations_dir(self, seq: str) -> Path:
        return self.annotations_root / seq

    def annotation(self, seq: str, frame: str | Path) -> Path:
        """The annotation of frame `frame` (a frame path or name; its stem is used)."""
        return self.annotations_dir(seq) / f"{Path(frame).stem}.png"

    def split_file(self, split: str = "val", year: str | None = None) -> Path:
        """`ImageSets/<year>/<split>.txt` (DAVIS), or `ImageSets/<split>.txt` without a year."""
        sets = self.root / "ImageSets"
        return (sets / year if year else sets) / f"{split}.txt"

    @classmethod
    def of_frames_dir(cls, frames_dir: str | Path) -> tuple[DavisLayout, str] | None:
        """(layout, sequence) of a `<root>/JPEGImages/<res>/<seq>` folder, else None."""
        p = Path(frames_dir)
        if p.parent.parent.name != "JPEGImages":
            return None
        return cls(p.parent.parent.parent, p.parent.name), p.name


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


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Save object ids as a DAVIS palette PNG (the runtime's writer). labels: (H,W) in 0..255."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be (H,W) with ids in 0..255, got {labels.shape}")
    save_palette_png(labels.astype(np.uint8), path)


def read_sequence(root: str | Path, seq: str, resolution: str = RESOLUTION) -> DavisSequence:
    """Frame paths and ground-truth ids of `seq`; every frame must be annotated."""
    layout = DavisLayout(Path(root), resolution)
    frame_dir = layout.frames_dir(seq)
    if not frame_dir.is_dir():
        raise DatasetError(f"sequence {seq!r}: no frame folder {frame_dir}")
    frames = frame_files(frame_dir)
    if not frames:
        raise DatasetError(f"sequence {seq!r}: no frames in {frame_dir}")
    masks = [layout.annotation(seq, f) for f in frames]
    for f, m in zip(frames, masks):
        if not m.is_file():
            raise DatasetError(f"sequence {seq!r}: frame {f.name} has no annotation {m} (every "
                               "frame must be annotated)")
    labels = [read_labels(p, MaskMode.GROUND_TRUTH) for p in masks]
    if len({lab.shape for lab in labels}) != 1:
        raise DatasetError(f"{seq}: annotations differ in size")
    return DavisSequence(name=seq, frames=tuple(frames), labels=np.stack(labels))


def list_sequences(root: str | Path, split_file: str | Path | None = None) -> list[str]:
    """Sequence names from a split file, else the first of ImageSets/{2017,2016}/val.txt found,
    else every annotated sequence folder."""
    layout = DavisLayout(Path(root))
    if split_file is None:
        for year in ("2017", "2016"):
            candidate = layout.split_file("val", year)
            if candidate.is_file():
                split_file = candidate
                break
    if split_file is not None:
        path = Path(split_file)
        if not path.is_file():
            raise DatasetError(f"split file {path} not found")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    ann = layout.annotations_root
    if not ann.is_dir():
        raise DatasetError(f"{layout.root} has no Annotations/{RESOLUTION}: not a DAVIS root")
    return sorted(p.name for p in ann.iterdir() if p.is_dir())
