"""One propagation run of a session, through `runtime.job.propagate` (the loop `run.py` runs),
reporting each frame as it comes. Blocking: the server runs it in a worker thread and sets the
session's stop event when the tab cancels or goes away."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from app.sessions import Session
from runtime.core.errors import InputError
from runtime.job import propagate
from runtime.media.given import GivenMask
from runtime.segmenter import RunTotals, Segmenter

Emit = Callable[[dict[str, Any]], None]


class ModelBusy(InputError):
    """The server's one model is propagating another tab's video."""


def run_propagation(session: Session, segmenter: Segmenter, model_lock: threading.Lock,
                    start: int, stop: threading.Event, emit: Emit) -> dict[str, Any]:
    """Propagate the session's video from frame `start` with the masks given so far; results
    for earlier frames stay as they are. stop: set, the run ends after the current frame.
    emit: called with a message per frame. Returns the closing message: frames done, model FPS
    (as run.json's `fps`), cancelled or not."""
    video, given = session.begin_run(stop, start)
    state = None
    try:
        if not model_lock.acquire(blocking=False):
            raise ModelBusy("the model is propagating another tab's video: try again when it "
                            "is done")
        try:
            result = _run(session, segmenter, video.source, given, start, video.length, stop,
                          emit)
            first = segmenter.first_score
            state = (tuple(segmenter.object_ids), first if math.isfinite(first) else None)
            return result
        finally:
            model_lock.release()
    finally:
        session.end_run(state)


def _run(session: Session, segmenter: Segmenter, source: Path, given: Mapping[int, GivenMask],
         start: int, length: int, stop: threading.Event, emit: Emit) -> dict[str, Any]:
    totals = RunTotals()
    total = length - start
    t0 = time.perf_counter()
    done = 0
    frames = propagate(segmenter, source, given, start=start, max_frames=length, stop=stop)
    with contextlib.closing(frames):  # its reader stops whatever ends the loop
        for out in frames:
            session.store(out.index, out.labels, out.record)
            totals.add(out.record)
            done += 1
            emit({"type": "frame", "index": out.index, "done": done, "total": total,
                  "fps": totals.summary()["fps"],
                  "wall_fps": round(done / (time.perf_counter() - t0), 3)})
    return {"type": "done", "start": start, "frames": done, "total": total,
            "cancelled": stop.is_set() and done < total, "fps": totals.summary()["fps"],
            "wall_s": round(time.perf_counter() - t0, 3)}
