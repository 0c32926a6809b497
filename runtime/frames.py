"""Frame sources, first-mask reading, pre/post-processing and output writing (numpy/cv2/PIL).

Frames are RGB uint8 (H0, W0, 3) at their original size; the graphs see them resized to the
manifest's (H, W). Labels are uint8 (H0, W0) maps whose values are object ids (= DAVIS palette
indices, 0 = background).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import InputError, MaskError, OutputError

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def davis_palette() -> np.ndarray:
    """(256, 3) uint8: the DAVIS / PASCAL VOC colour map (index 1 = dark red, 2 = green...)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = davis_palette()


# ---------------------------------------------------------------------------------- sources
@dataclass
class FrameSource:
    """An iterable of RGB frames. length is None for live sources (camera, stream)."""

    description: str
    length: int | None
    fps: float | None
    live: bool

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class FolderSource(FrameSource):
    def __init__(self, folder: Path):
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in FRAME_EXTS)
        if not files:
            raise InputError(f"input folder {folder} holds no frames ({', '.join(FRAME_EXTS)})")
        super().__init__(f"folder {folder} ({len(files)} frames)", len(files), None, False)
        self.files = files

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.files:
            yield read_frame(f)


class CaptureSource(FrameSource):
    """A video file, camera index or stream URL read with cv2.VideoCapture."""

    def __init__(self, target: str | int, live: bool):
        self.target = target
        cap = self._open()
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        cap.release()
        kind = "camera" if isinstance(target, int) else ("stream" if live else "video")
        super().__init__(f"{kind} {target}", n if n > 0 else None, fps, live)

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"cannot open {self.target!s}: not a readable video/camera/stream")
        return cap

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = self._open()
        try:
            n = 0
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                n += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if n == 0:
                raise InputError(f"no frame could be decoded from {self.target!s}")
        finally:
            cap.release()


def open_source(src: str | Path) -> FrameSource:
    """Folder of frames, video file, camera index ("0") or stream URL ("rtsp://...")."""
    s = str(src)
    if s.isdigit():
        return CaptureSource(int(s), live=True)
    if "://" in s:
        return CaptureSource(s, live=True)
    path = Path(s)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() in FRAME_EXTS:
        raise InputError(f"{path} is a single image: pass the folder of frames")
    if path.stat().st_size == 0:
        raise InputError(f"video file {path} is empty")
    return CaptureSource(str(path), live=False)


def read_frame(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; imdecode copes with any path encoding."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise InputError(f"cannot read frame {path}: {e}") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"cannot decode frame {path}: corrupt or not an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


T = TypeVar("T")


def with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Pairs (item, is_last) with one item of look-ahead (only for finite, non-live inputs)."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


# ------------------------------------------------------------------------------------ masks
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


# ------------------------------------------------------------------------ pre/post-process
def resize_frame(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H0, W0, 3) uint8 -> (H, W, 3) uint8: area when shrinking, bilinear when enlarging."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"frames must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrink = rgb.shape[0] > height or rgb.shape[1] > width
    return cv2.resize(rgb, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def onehot(labels: np.ndarray, ids: tuple[int, ...], n: int, height: int,
           width: int) -> np.ndarray:
    """labels (H0, W0) -> (n, H, W) float32 one-hot of `ids` (nearest resize; rest zero)."""
    small = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    out = np.zeros((n, height, width), np.float32)
    for i, obj in enumerate(ids):
        out[i] = small == obj
    return out


def prob_to_labels(prob: np.ndarray, ids: tuple[int, ...], height: int,
                   width: int) -> np.ndarray:
    """prob (C, H, W), C >= len(ids) + 1, background first -> (height, width) uint8 ids.

    Argmax of the bilinearly resized probabilities (not a resize of the label map). Bilinear
    resizing is linear, so one object needs only the resized difference object - background;
    several objects keep a running max over the resized planes (ties go to the lower index,
    as argmax).
    """
    def up(plane: np.ndarray) -> np.ndarray:
        plane = np.ascontiguousarray(plane, np.float32)
        if plane.shape == (height, width):
            return plane
        return cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)

    if len(ids) == 1:
        return (up(prob[1] - prob[0]) > 0).astype(np.uint8) * np.uint8(ids[0])
    best = up(prob[0]).copy()
    out = np.zeros((height, width), np.uint8)
    for c, obj in enumerate(ids, start=1):
        p = up(prob[c])
        out[p > best] = obj
        np.maximum(best, p, out=best)
    return out


# ---------------------------------------------------------------------------------- outputs
def save_palette_png(labels: np.ndarray, path: str | Path) -> None:
    """uint8 ids -> palette PNG (index = object id, DAVIS colours)."""
    im = Image.fromarray(np.ascontiguousarray(labels, np.uint8))
    im.putpalette(PALETTE.tobytes())
    try:
        im.save(path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e}") from None


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the objects' palette colours over the frame -> (H0, W0, 3) uint8 BGR."""
    colour = PALETTE[labels]
    fg = (labels > 0)[..., None]
    mixed = np.where(fg, (rgb * (1 - alpha) + colour * alpha).astype(np.uint8), rgb)
    return cv2.cvtColor(mixed, cv2.COLOR_RGB2BGR)


class OverlayWriter:
    """mp4 (mp4v) of the overlays; the size is fixed by the first frame."""

    def __init__(self, path: str | Path, fps: float | None):
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 24.0
        self._writer: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        frame = overlay(rgb, labels)
        h, w = frame.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise OutputError(f"cannot open {self.path} for writing (mp4v)")
        if (w, h) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
