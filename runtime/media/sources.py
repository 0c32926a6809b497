"""Frame sources: a folder of frames, a video file, a camera or a stream, as RGB frames.

Frames are RGB uint8 (H0, W0, 3) at their original size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from natsort import natsorted

from runtime.core.errors import InputError

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# FFmpeg inside OpenCV prints its own lines ("moov atom not found") beside our one `error:` line
# for a video it cannot read; quiet unless the user asks for them (read at its first use).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@dataclass
class FrameSource:
    """An iterable of RGB frames. length is None for live sources (camera, stream)."""

    description: str
    length: int | None
    fps: float | None
    live: bool

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


def in_name_order(paths: Iterable[Path]) -> list[Path]:
    """Files of one video (frames, masks) in time order: by name, numbers by value, so that
    unpadded names (1.jpg, 2.jpg, 10.jpg, as `ffmpeg -i v.mp4 %d.jpg` writes them) keep it."""
    return natsorted(paths, key=lambda p: p.name)


def frame_files(folder: Path) -> list[Path]:
    """The frame images in `folder`, in time order."""
    return in_name_order(p for p in folder.iterdir()
                         if p.is_file() and p.suffix.lower() in FRAME_EXTS)


class FolderSource(FrameSource):
    def __init__(self, folder: Path):
        files = frame_files(folder)
        if not files:
            raise InputError(f"input folder {folder} holds no frames ({', '.join(FRAME_EXTS)})")
        super().__init__(f"folder {folder} ({len(files)} frames)", len(files), None, False)
        self.files = files

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.files:
            yield read_frame(f)


def is_utf8(path: str | Path) -> bool:
    """Whether `path` is valid UTF-8 (file names are bytes; Python keeps other bytes as
    surrogates). OpenCV's video reader and writer crash the process (SIGSEGV) on one that is
    not, and a web page cannot name it."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


class _OpenCvSilence:
    """OpenCV logs a line per capture backend it tried on an input it cannot open. Its log level
    is the process's: the first of the threads opening a capture silences it, the last one
    restores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._level = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        log = cv2.utils.logging
        entered = False
        try:
            with self._lock:
                self._users += 1
                entered = True
                if self._users == 1:
                    self._level = log.getLogLevel()
                    log.setLogLevel(log.LOG_LEVEL_SILENT)
            yield
        finally:
            with self._lock:
                if entered:
                    self._users -= 1
                    if self._users == 0:
                        log.setLogLevel(self._level)


_opencv_silent = _OpenCvSilence()


class CaptureSource(FrameSource):
    """A video file, camera index or stream URL read with cv2.VideoCapture."""

    def __init__(self, target: str | int, live: bool):
        if not is_utf8(target):
            raise InputError(f"cannot open {target!s}: OpenCV reads no video whose path is not "
                             "valid UTF-8; rename it")
        self.target = target
        cap = self._open()
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        cap.release()
        kind = "camera" if isinstance(target, int) else ("stream" if live else "video")
        super().__init__(f"{kind} {target}", n if n > 0 else None, fps, live)

    def _open(self) -> cv2.VideoCapture:
        with _opencv_silent():  # the error below says it once
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


def truncation_note(source: FrameSource, decoded: int) -> str | None:
    """What to say of a video that ends before the frame count its container declares (a cut
    download, a damaged file) after `decoded` frames; None when it does not."""
    declared = source.length
    if declared is None or source.live or decoded >= declared:
        return None
    return (f"{source.description} declares {declared} frames but only {decoded} could be "
            "decoded: the file looks truncated or damaged")


def open_source(src: str | Path) -> FrameSource:
    """Folder of frames, video file, camera index ("0") or stream URL ("rtsp://..."); a path
    that exists is a path, even one named like a camera index (a folder `123`)."""
    s = str(src)
    path = Path(s)
    if s.isdigit() and not path.exists():
        return CaptureSource(int(s), live=True)
    if "://" in s:
        return CaptureSource(s, live=True)
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
