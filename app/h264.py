"""Overlay videos that browsers play: H.264 in MP4 through PyAV, whose wheels carry FFmpeg with
libx264 (the runtime's OpenCV writes MPEG-4 Part 2, which browsers do not play)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from runtime.core.errors import OutputError
from runtime.media.palette import overlay_fps

CODEC = "libx264"
# yuv420p: the one H.264 pixel format every browser decodes; crf 23 / veryfast: x264's default
# quality at a fraction of its default encoding time
OPTIONS = {"crf": "23", "preset": "veryfast"}


def write_h264(path: Path, frames: Iterable[np.ndarray], fps: float | None) -> int:
    """Encode (H, W, 3) uint8 RGB frames of one size into an MP4 at `path`; returns the frame
    count. Odd sizes are padded by a pixel (4:2:0 needs even ones)."""
    import av  # the [app] extra

    rate = Fraction(overlay_fps(fps)).limit_denominator(1001)
    n = 0
    try:
        # +faststart: the index goes first, so a browser plays the file while it loads
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = None
            for frame in frames:
                h, w = frame.shape[:2]
                if stream is None:
                    stream = out.add_stream(CODEC, rate=rate)
                    stream.width, stream.height = w + w % 2, h + h % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = dict(OPTIONS)
                padded = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                    out.mux(packet)
                n += 1
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
    except (OSError, av.FFmpegError) as e:
        raise OutputError(f"cannot write the overlay video {path.name}: {e}") from None
    return n


def video_codec(path: Path) -> tuple[str, int]:
    """(codec name, decodable frames) of a video file's first video stream: what a test or a
    user checks a browser will play."""
    import av

    with av.open(str(path)) as f:
        name = f.streams.video[0].codec_context.name
        return name, sum(1 for _ in f.decode(video=0))
