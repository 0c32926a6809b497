"""The DAVIS palette and what is drawn with it: palette PNGs and overlay videos."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from runtime.core.errors import OutputError
from runtime.media.sources import is_utf8


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


def save_palette_png(labels: np.ndarray, path: str | Path, name: str | Path | None = None) -> None:
    """uint8 ids -> palette PNG (index = object id, DAVIS colours). name: the path messages
    give (the user's, where `path` is a staged file)."""
    im = Image.fromarray(np.ascontiguousarray(labels, np.uint8))
    im.putpalette(PALETTE.tobytes())
    try:
        im.save(path)
    except OSError as e:
        raise OutputError(f"cannot write {name or path}: {e.strerror or e}") from None


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the objects' palette colours over the frame -> (H0, W0, 3) uint8 BGR."""
    colour = PALETTE[labels]
    fg = (labels > 0)[..., None]
    mixed = np.where(fg, (rgb * (1 - alpha) + colour * alpha).astype(np.uint8), rgb)
    return cv2.cvtColor(mixed, cv2.COLOR_RGB2BGR)


# Overlay video containers by file extension, each with a codec this OpenCV build writes
# silently (its FFmpeg has no H.264 encoder; WebM with VP9 works but prints a warning).
OVERLAY_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "VP90"}
MAX_FPS = 1000.0  # frame rates above are no camera's


def overlay_fps(fps: float | None) -> float:
    """The rate an overlay video is written at: the source's, or 24 where it has none or reports
    one no camera has (a stream's 90 kHz clock, which no writer takes)."""
    return fps if fps and 0 < fps <= MAX_FPS else 24.0


def check_overlay_name(path: str | Path) -> None:
    """Refuse (OutputError) an overlay path whose extension names no video container we write."""
    if Path(path).is_dir():
        raise OutputError(f"{path} is a folder, expected a file path")
    suffix = Path(path).suffix.lower()
    if suffix not in OVERLAY_CODECS:
        raise OutputError(f"overlay {path}: {suffix or 'no extension'} is not a video file "
                          f"type this tool writes; use {', '.join(OVERLAY_CODECS)}")
    if not is_utf8(os.path.realpath(path)):
        raise OutputError(f"overlay {path}: OpenCV writes no video whose path is not valid "
                          "UTF-8; choose another name")


class OverlayWriter:
    """A video of the overlays (codec by the file's extension, OVERLAY_CODECS); the size is
    fixed by the first frame. name: the path messages give (the user's, not a staged file's)."""

    def __init__(self, path: str | Path, fps: float | None, name: str | Path | None = None):
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        check_overlay_name(self.name)
        self.codec = OVERLAY_CODECS[self.path.suffix.lower()]
        self.fps = overlay_fps(fps)
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray, labels: np.ndarray) -> None:
        frame = overlay(rgb, labels)
        h, w = frame.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise OutputError(f"cannot open {self.name} for writing ({self.codec})")
        if (w, h) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finish the file, and check that it holds every frame: OpenCV's writer drops the
        frames it cannot write (a full disk) without a word."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        cap = cv2.VideoCapture(str(self.path))
        held = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if held < self.frames:
            raise OutputError(f"cannot write {self.name}: only {held} of its {self.frames} "
                              "frames reached the file (is the disk full?)")
