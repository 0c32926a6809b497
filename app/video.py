"""A video opened in a session: where the runtime reads it from, and its frames decoded once
into the session's folder, so that the page can show and mark any frame at once (a video
container cannot jump to a frame cheaply). Propagation reads the original, exactly as
`runtime/run.py` would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.paths import check_inside
from runtime.core.errors import InputError
from runtime.core.resize import resize_frame
from runtime.media.sources import FolderSource, open_source, read_frame, truncation_note

MAX_FRAMES = 3000  # the page keeps every frame; a longer video is one for `qdmn-run`
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Video:
    """name: what the page calls it; source: what the runtime reads; frames_dir: the decoded
    frames (JPEG, all at the first frame's size: the masks' size)."""

    name: str
    source: Path
    frames_dir: Path
    length: int
    height: int
    width: int
    fps: float | None
    notes: tuple[str, ...] = ()  # what the page says of it once opened (a truncated file)

    def frame_path(self, index: int) -> Path:
        if not 0 <= index < self.length:
            raise InputError(f"frame {index}: the video has frames 0..{self.length - 1}")
        return self.frames_dir / f"{index:05d}.jpg"

    def frame(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, as the page shows it."""
        return read_frame(self.frame_path(index))


def open_video(source: Path, name: str, frames_dir: Path, root: Path | None = None) -> Video:
    """Decode `source` (a video file or a folder of frames) into `frames_dir`; InputError, with
    the runtime's reason, for what is not a readable video. root: where the folder's frames
    must stay (a frame linked from outside it is refused)."""
    src = open_source(source)
    if isinstance(src, FolderSource) and root is not None:
        check_inside(root, src.files)
    if src.length is not None and src.length > MAX_FRAMES:
        raise _too_long(name)
    frames_dir.mkdir(parents=True, exist_ok=True)
    size: tuple[int, int] | None = None
    n = 0
    for frame in src:
        if n >= MAX_FRAMES:
            raise _too_long(name)
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:  # the runtime resizes or refuses it; the page just shows
            frame = resize_frame(frame, *size)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        ok = cv2.imwrite(str(frames_dir / f"{n:05d}.jpg"), bgr,
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(f"cannot write frame {n} of {name} into the app's work folder")
        n += 1
    if size is None:
        raise InputError(f"{name}: no frame could be decoded")
    note = truncation_note(src, n)
    notes = () if note is None else (note.replace(str(source), name),)
    return Video(name, source, frames_dir, n, size[0], size[1], src.fps, notes)


def _too_long(name: str) -> InputError:
    return InputError(f"{name} has more than {MAX_FRAMES} frames: the app keeps every frame; "
                      "segment longer videos with qdmn-run")
