"""Masks and label maps: the one reader of mask PNGs, and fitting a first mask to the frames.

Labels are uint8 (H0, W0) maps whose values are object ids (= DAVIS palette indices,
0 = background). Every mask PNG of the project (a user's first mask, DAVIS ground truth, the
training data) is read by `read_labels`, so a PNG means the same object ids everywhere:

- palette PNG (DAVIS 2017, what the CLI writes): ids are the palette indices;
- grayscale PNG (DAVIS 2016): 0 / 255 only, 255 = object 1;
- RGB(A) PNG: every colour must be a DAVIS (= Pascal VOC) palette colour; its index is the id.

Palette index 255 (colour (224, 224, 192)) is DAVIS's and VOC's "void" (unlabelled border
pixels) and reads as background, as in the DAVIS toolkit.

Modes say what the map is for: `first` (the annotation a video starts from: it must mark an
object) and `ground_truth` (a dataset annotation, which may show no object).
"""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.core.errors import MaskError
from runtime.media.palette import PALETTE

VOID_ID = 255  # DAVIS palette index of unlabelled pixels
_GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L")


class MaskMode(str, Enum):
    FIRST = "first"  # a video's first-frame mask: must mark at least one object
    GROUND_TRUTH = "ground_truth"  # a dataset annotation: may be empty


def read_labels(path: str | Path, mode: MaskMode | str) -> np.ndarray:
    """A mask PNG (see the module docstring) -> (H, W) uint8 object ids; MaskError if it is
    missing, unreadable, of unknown colours or values, or (mode `first`) empty."""
    mode = MaskMode(mode)
    path = Path(path)
    what = "first mask" if mode is MaskMode.FIRST else "annotation"
    if path.is_dir():
        raise MaskError(f"{what} {path} is a folder, expected a mask PNG")
    if not path.is_file():
        raise MaskError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            image_mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MaskError(f"{what} {path} is not a readable image: {e}") from None
    if image_mode in ("P", "1"):
        labels = arr.astype(np.uint8)
    elif image_mode in _GRAY_MODES:
        gray = arr[..., 0] if arr.ndim == 3 else arr
        values = np.unique(gray)
        bad = [int(v) for v in values if v not in (0, 255)]
        if bad:
            raise MaskError(
                f"{what} {path} is grayscale with values {bad[:8]}: grayscale masks must be "
                "0 (background) / 255 (object); for several objects save a palette PNG whose "
                "indices are the object ids")
        labels = (gray == 255).astype(np.uint8)
    elif image_mode in ("RGB", "RGBA"):
        labels = _colours_to_ids(arr[..., :3], path, what)
    else:
        raise MaskError(f"{what} {path} has unsupported image mode {image_mode}")
    labels[labels == VOID_ID] = 0  # palette index / colour 255: void
    if mode is MaskMode.FIRST and not labels.any():
        raise MaskError(f"first mask {path} is empty: it marks no object (palette index "
                        f"{VOID_ID} is DAVIS's void and counts as background)")
    return labels


def labels_array(mask: np.ndarray, what: str) -> np.ndarray:
    """A mask given as an array -> (H, W) uint8 object ids; MaskError naming `what` unless it
    is (H, W) integer (or bool) ids in 0..255."""
    if (mask.ndim != 2 or 0 in mask.shape or not (np.issubdtype(mask.dtype, np.integer)
                                                  or mask.dtype == bool)
            or mask.min() < 0 or mask.max() > 255):
        raise MaskError(f"{what} must be an (H, W) array of object ids in 0..255, got shape "
                        f"{mask.shape} {mask.dtype}")
    return mask.astype(np.uint8, copy=False)


def read_mask(path: str | Path) -> np.ndarray:
    """A video's first-frame mask -> (H, W) uint8 object ids (`read_labels`, mode first)."""
    return read_labels(path, MaskMode.FIRST)


def _colours_to_ids(rgb: np.ndarray, path: Path, what: str) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = PALETTE.astype(np.int32)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(c): i for i, c in reversed(list(enumerate(pal_code)))}
    colours, inverse = np.unique(code, return_inverse=True)
    ids = []
    for c in colours:
        if int(c) not in lookup:
            unknown = [((int(u) >> 16) & 255, (int(u) >> 8) & 255, int(u) & 255)
                       for u in colours if int(u) not in lookup]
            raise MaskError(f"{what} {path} has colours that are not DAVIS palette entries: "
                            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        ids.append(lookup[int(c)])
    return np.asarray(ids, np.uint8)[inverse.reshape(code.shape)]


def fit_mask(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a mask (nearest) to the frame size, with a warning, when they differ."""
    if labels.shape == (height, width):
        return labels
    warnings.warn(f"first mask is {labels.shape[1]}x{labels.shape[0]}, frames are "
                  f"{width}x{height}: resizing the mask (nearest)", stacklevel=3)
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def object_ids(labels: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unique(labels) if v != 0)
