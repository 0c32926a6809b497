"""First-frame masks: reading them as object ids and fitting them to the frames.

Labels are uint8 (H0, W0) maps whose values are object ids (= DAVIS palette indices,
0 = background).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import MaskError
from runtime.palette import PALETTE


def read_mask(path: str | Path) -> np.ndarray:
    """First-frame mask -> (H, W) uint8 object ids.

    Palette PNG: ids are the palette indices (DAVIS 2017). Grayscale: 0/255 only, 255 = object 1
    (DAVIS 2016). RGB: every colour must be a DAVIS palette colour.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"first mask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MaskError(f"first mask {path} is not a readable image: {e}") from None
    if mode == "P" or mode == "1":
        labels = arr.astype(np.uint8)
    elif mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L"):
        gray = arr[..., 0] if arr.ndim == 3 else arr
        values = np.unique(gray)
        bad = [int(v) for v in values if v not in (0, 255)]
        if bad:
            raise MaskError(
                f"first mask {path} is grayscale with values {bad[:8]}: grayscale masks must be "
                "0 (background) / 255 (object); for several objects save a palette PNG whose "
                "indices are the object ids")
        labels = (gray == 255).astype(np.uint8)
    elif mode in ("RGB", "RGBA"):
        labels = _colours_to_ids(arr[..., :3], path)
    else:
        raise MaskError(f"first mask {path} has unsupported image mode {mode}")
    if not labels.any():
        raise MaskError(f"first mask {path} is empty: it marks no object")
    return labels


def _colours_to_ids(rgb: np.ndarray, path: Path) -> np.ndarray:
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
            raise MaskError(f"first mask {path} has colours that are not DAVIS palette entries: "
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
