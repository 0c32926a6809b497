"""A session's result as one zip: `masks/00000.png ...` (palette PNGs at the frames' size, index
= object id, as `run.py` writes them), `run.json` (run.py's log of the latest result of every
frame, plus the frames the user gave masks on) and `overlay.mp4` (H.264, plays in browsers),
which is also kept beside the zip for the page to play. Both are written through
`runtime.media.outputs.StagedFile`: locked, staged, moved in whole."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.h264 import write_h264
from app.sessions import Session
from app.video import Video
from runtime.job import RUN_LOG, dump_run_log, frame_line, frame_png, run_log
from runtime.media.outputs import StagedFile
from runtime.media.palette import overlay, save_palette_png
from runtime.media.sources import open_source
from runtime.segmenter import FrameRecord, RunTotals, Segmenter

OVERLAY = "overlay.mp4"


def export_zip(session: Session, segmenter: Segmenter, target: Path) -> tuple[Path, Path]:
    """Write the session's masks, log and overlay video into the zip `target`, and the overlay
    video beside it (same name, .mp4); returns both paths."""
    # the session's lock throughout: no edit or run changes the masks while they are written
    with session.lock:
        session.check_idle()
        video = session.require_video()
        labels = session.labels
        records = [session.records.get(i) or FrameRecord.empty(i) for i in range(video.length)]
        given = sorted(session.given)
        objects, first_score = session.model_state
        assert labels is not None
        movie = target.with_suffix(".mp4")
        staged = [StagedFile(target)]
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=session.folder))
        try:
            staged.append(StagedFile(movie))
            with zipfile.ZipFile(staged[0].path, "w", zipfile.ZIP_STORED) as zf:
                for i in range(video.length):
                    png = scratch / frame_png(i)
                    save_palette_png(labels.labels(i), png)
                    zf.write(png, f"masks/{frame_png(i)}")
                    png.unlink()
                log = {"input": video.name, "given_frames": given,
                       **_log(segmenter, video.source, records),
                       "objects": list(objects), "first_score": first_score}
                text = "".join(dump_run_log(log, map(frame_line, records)))
                zf.writestr(RUN_LOG, text, zipfile.ZIP_DEFLATED)
                write_h264(staged[1].path, _overlays(video, labels.labels), video.fps)
                zf.write(staged[1].path, OVERLAY)
            for s in staged:
                s.commit()
        except BaseException:
            for s in staged:
                s.abort()
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target, movie


def _overlays(video: Video, labels_of: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]:
    for i in range(video.length):
        # runtime.media.palette.overlay blends in BGR order, for OpenCV's writers
        yield overlay(video.frame(i), labels_of(i))[..., ::-1]


def _log(segmenter: Segmenter, source: Path, records: list[FrameRecord]) -> dict[str, Any]:
    """run.json's fields as run.py writes them, over the latest result of each frame (`records`,
    in frame order: runs from several start frames add up). The segmenter serves every tab: the
    fields it holds per video (objects, first_score) are this session's own, set by the
    caller."""
    totals = RunTotals()
    for r in records:
        totals.add(r)
    return run_log(segmenter, open_source(source), totals, False, decoded=len(records))
