"""Masks given on frames other than the first (`--masks DIR`): the YouTube-VOS / DAVIS layout.

`DIR/<frame>.png` for some frames, where <frame> is a frame file's name without its extension
(a folder of frames) or the frame's number (a video: `00010.png` or `10.png` is frame 10). Each
is read as an annotation (`runtime.media.masks`: palette, 0/255 grayscale or DAVIS colours; void
is background) and decides the object ids it contains on its frame; objects it does not
mention are propagated there as usual. An object may first appear on any given frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.core.errors import MaskError
from runtime.media.masks import MaskMode, labels_array, object_ids, read_labels
from runtime.media.sources import FolderSource, FrameSource


@dataclass(frozen=True)
class GivenMask:
    """A mask given on one frame. labels: (H, W) uint8 object ids at the frame's size; objects:
    the ids it decides there (one listed without pixels is absent on that frame), None: the ids
    present in labels; name: what messages call it (e.g. the file it was read from)."""

    labels: np.ndarray
    objects: tuple[int, ...] | None = None
    name: str | None = None
    # the `--mask` first-frame mask: one of another size but the frame's aspect ratio is
    # resized (with a warning), as that mask always was; every other given mask must fit
    fit: bool = False

    @property
    def decided(self) -> tuple[int, ...]:
        return object_ids(self.labels) if self.objects is None else self.objects


Given = Mapping[int, GivenMask]


def as_given(masks: Mapping[int, GivenMask | np.ndarray]) -> dict[int, GivenMask]:
    """Frame index -> GivenMask, from arrays or GivenMasks; MaskError for anything else."""
    out = {}
    for index, m in sorted(masks.items()):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise MaskError(f"given masks are keyed by frame index >= 0, got {index!r}")
        g = m if isinstance(m, GivenMask) else GivenMask(np.asarray(m))
        objects = None if g.objects is None else tuple(int(o) for o in g.objects)
        g = GivenMask(labels_array(g.labels, f"the mask of frame {index}"), objects, g.name,
                      g.fit)
        if not g.decided:
            raise MaskError(f"the mask of frame {index} marks no object")
        out[int(index)] = g
    return out


def read_given_masks(folder: str | Path, source: FrameSource) -> dict[int, GivenMask]:
    """`folder`'s `<frame>.png` files as frame index -> GivenMask for `source`'s frames;
    MaskError naming the file for one that matches no frame or cannot be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"{folder} is not a folder of <frame>.png masks")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise MaskError(f"masks folder {folder} holds no .png mask")
    stems = ({p.stem: i for i, p in enumerate(source.files)}
             if isinstance(source, FolderSource) else None)
    out: dict[int, GivenMask] = {}
    named: dict[int, Path] = {}
    for path in files:
        index = _frame_index(path, stems)
        if index is None or (source.length is not None and index >= source.length):
            what = (f"a frame of {source.description}" if stems is not None
                    else f"a frame number of {source.description}")
            raise MaskError(f"mask {path} is not named after {what}")
        if index in named:
            raise MaskError(f"masks {named[index]} and {path} are both for frame {index}: keep "
                            "one")
        named[index] = path
        labels = read_labels(path, MaskMode.GROUND_TRUTH)
        if not labels.any():
            raise MaskError(f"mask {path} marks no object (void, index 255, is background)")
        out[index] = GivenMask(labels, name=f"mask {path}")
    return out


def _frame_index(path: Path, stems: dict[str, int] | None) -> int | None:
    if stems is not None:
        return stems.get(path.stem)
    return int(path.stem) if path.stem.isdigit() else None


def check_given(given: GivenMask, frame_hw: tuple[int, int], index: int) -> None:
    """A later frame's given mask has its frame's size (a mask of another video is refused,
    not resized)."""
    h, w = given.labels.shape
    if (h, w) != frame_hw:
        raise MaskError(f"{given.name or f'the mask of frame {index}'} is {w}x{h} but frame "
                        f"{index} is {frame_hw[1]}x{frame_hw[0]}: a given mask must have its "
                        "frame's size")
