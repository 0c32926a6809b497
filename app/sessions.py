"""Per-tab sessions: each browser tab asks for its own, which holds one video, the masks the
user gave, the results of the runs and a folder of its own under the app's work folder. Tabs
never see each other's: every request names its session by a random id."""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.labels import FrameLabels
from app.video import Video, open_video
from runtime.core.errors import InputError, MaskError
from runtime.core.manifest import Manifest
from runtime.media.given import GivenMask, as_given, check_given
from runtime.media.masks import MaskMode, object_ids, read_labels
from runtime.segmenter import FrameRecord

MAX_OBJECT_ID = 254  # palette index 255 is DAVIS's void
# A tab's page asks for its state every minute while it is open, and closes its session when it
# is closed; a tab that crashed (or whose browser went away) is forgotten after this long.
DEFAULT_IDLE_S = 3600.0


class Busy(InputError):
    """The session's video is being propagated: edits and a second run wait for it."""


class Session:
    """One tab's work. Methods that change it hold `lock`; a run holds `stop` (set it to end the
    run after the current frame)."""

    def __init__(self, sid: str, folder: Path, manifest: Manifest):
        self.id, self.folder, self.manifest = sid, folder, manifest
        self.lock = threading.RLock()
        self.video: Video | None = None
        self.labels: FrameLabels | None = None
        self.given: dict[int, GivenMask] = {}
        self._ids: dict[int, frozenset[int]] = {}  # the ids with pixels in each given mask
        self.records: dict[int, FrameRecord] = {}  # the latest run's record of each frame
        self.stop: threading.Event | None = None  # set while a run is going
        # what run.json reads from the segmenter, as this session's last run left it (the one
        # segmenter serves every tab): object ids and the first given frame's quality
        self.model_state: tuple[tuple[int, ...], float | None] = ((), None)
        self.seen = time.monotonic()  # the last request that named this session

    # ------------------------------------------------------------------ opening a video
    def open(self, source: Path, name: str, root: Path | None = None) -> None:
        """Decode a video (an uploaded file in this session's folder, or a path under the root)
        and start over with it; a video that cannot be opened leaves the session as it was."""
        with self.lock:
            self.check_idle()
            frames = Path(tempfile.mkdtemp(prefix="frames-", dir=self.folder))
            try:
                video = open_video(source, name, frames, root)
            except BaseException as e:
                shutil.rmtree(frames, ignore_errors=True)
                if isinstance(e, InputError):  # the runtime names the file by its path here;
                    raise type(e)(str(e).replace(str(source), name)) from None  # the page by name
                raise
            old, self.video = self.video, video
            self.labels = FrameLabels(video.height, video.width)
            self.given, self._ids, self.records = {}, {}, {}
            self.model_state = ((), None)
            if old is not None:
                shutil.rmtree(old.frames_dir, ignore_errors=True)
                if old.source != source and old.source.is_relative_to(self.folder):
                    old.source.unlink(missing_ok=True)  # the previous upload

    def require_video(self) -> Video:
        if self.video is None:
            raise InputError("open a video first")
        return self.video

    def check_idle(self) -> None:
        if self.stop is not None:
            raise Busy("a propagation is running in this tab: wait for it or cancel it")

    # ------------------------------------------------------------------ masks
    def frame_labels(self, index: int) -> np.ndarray:
        video = self.require_video()
        video.frame_path(index)  # range check
        assert self.labels is not None
        return self.labels.labels(index)

    def objects(self) -> list[int]:
        """Every id with pixels in some given mask, in order: an object erased wherever it was
        marked is gone, as the runtime counts objects (a given mask may still decide it absent
        on its frame, which costs nothing)."""
        return sorted(self._present())

    def _present(self, but: int | None = None) -> set[int]:
        return {o for i, ids in self._ids.items() if i != but for o in ids}

    def edit(self, index: int, change: Callable[[np.ndarray], np.ndarray],
             touched: set[int]) -> None:
        """Apply `change` to frame `index`'s labels and make the result a given mask: the frame
        as the page shows it, deciding every object (one it does not show is absent there)."""
        with self.lock:
            self.check_idle()
            before = self.frame_labels(index)
            after = change(before)
            decided = set(self.objects()) | set(object_ids(before)) | touched
            if decided:  # else an eraser on a frame without objects: nothing to remember
                self._set_given(index, GivenMask(after, tuple(sorted(decided))))

    def put_mask(self, index: int, png: Path, name: str) -> None:
        """A mask PNG of the user's for frame `index` (the ids in it, at the frame's size)."""
        with self.lock:
            self.check_idle()
            video = self.require_video()
            video.frame_path(index)
            try:
                labels = read_labels(png, MaskMode.GROUND_TRUTH)
            except MaskError as e:  # the reader names the upload's file in the work folder
                raise MaskError(str(e).replace(str(png), name)) from None
            given = as_given({index: GivenMask(labels, name=f"mask {name}")})[index]
            check_given(given, (video.height, video.width), index)
            self._set_given(index, given)

    def _set_given(self, index: int, mask: GivenMask) -> None:
        ids = [o for o in mask.decided if o > MAX_OBJECT_ID]
        if ids:
            raise MaskError(f"object ids {ids}: ids go from 1 to {MAX_OBJECT_ID}")
        present = frozenset(object_ids(mask.labels))
        objects = self._present(but=index) | present
        self.manifest.check_object_count(len(objects), "the video")
        gone = self._present() - objects
        assert self.labels is not None
        self.given[index], self._ids[index] = mask, present
        self.labels[index] = mask.labels
        if gone:
            self._forget(gone)

    def _forget(self, gone: set[int]) -> None:
        """Objects erased wherever they were marked leave the frames an earlier run showed them
        on too: the page shows what a run from here would make, and a later edit of such a frame
        does not bring them back."""
        assert self.labels is not None
        for i in self.labels.indices():
            shown = self.labels.get(i)
            if i in self.given or shown is None:
                continue
            hit = np.isin(shown, sorted(gone))
            if hit.any():
                self.labels[i] = np.where(hit, 0, shown).astype(np.uint8)

    # ------------------------------------------------------------------ runs
    def begin_run(self, stop: threading.Event, start: int
                  ) -> tuple[Video, dict[int, GivenMask]]:
        """The video and given masks a run from frame `start` starts from; marks the session
        busy until `end_run` (`stop`: what ends the run early, set also when the session
        closes). A run from a frame after a marked one continues from that frame's masks as
        they are: they become a given mask (runtime.job.propagate starts at a given frame)."""
        with self.lock:
            self.check_idle()
            video = self.require_video()
            video.frame_path(start)  # range check
            if not self.given:
                raise MaskError("mark an object first: draw a box around it or paint it")
            if start not in self.given and min(self.given) < start:
                assert self.labels is not None
                shown = self.labels.get(start)
                if shown is None:
                    raise MaskError(f"frame {start} has no masks yet: propagate from a marked "
                                    "frame before it first")
                decided = set(self.objects()) | set(object_ids(shown))  # as the page shows it
                self._set_given(start, GivenMask(shown.copy(), tuple(sorted(decided))))
            self.stop = stop
            return video, dict(self.given)

    def store(self, index: int, labels: np.ndarray, record: FrameRecord) -> None:
        assert self.labels is not None
        self.labels[index] = labels
        self.records[index] = record

    def end_run(self, model_state: tuple[tuple[int, ...], float | None] | None) -> None:
        """The run is over; model_state: the segmenter's state it left (None: it failed)."""
        with self.lock:
            self.stop = None
            if model_state is not None:
                self.model_state = model_state

    def close(self) -> None:
        """Cancel a run and remove the session's folder."""
        stop = self.stop
        if stop is not None:
            stop.set()
        shutil.rmtree(self.folder, ignore_errors=True)


class Sessions:
    """The sessions of one server, each in a sub-folder of the work folder. A session no request
    has named for idle_s seconds, and that is not propagating, is closed (its folder removed)
    when another session is created or named: a crashed tab's upload does not stay on disk
    until the server stops."""

    def __init__(self, work_dir: Path, manifest: Manifest, idle_s: float = DEFAULT_IDLE_S):
        self.work_dir, self.manifest, self.idle_s = work_dir, manifest, idle_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def expire(self) -> None:
        """Close the sessions idle for longer than idle_s."""
        now = time.monotonic()
        with self._lock:
            gone = [sid for sid, s in self._sessions.items()
                    if now - s.seen > self.idle_s and s.stop is None]
        for sid in gone:
            self.close(sid)

    def create(self) -> Session:
        self.expire()
        sid = secrets.token_urlsafe(16)
        folder = self.work_dir / sid
        folder.mkdir(parents=True)
        session = Session(sid, folder, self.manifest)
        with self._lock:
            self._sessions[sid] = session
        return session

    def get(self, sid: str) -> Session:
        self.expire()
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None:
                session.seen = time.monotonic()
        if session is None:
            raise UnknownSession("this page's session is gone (the server restarted, or the tab "
                                 "was closed): reload the page")
        return session

    def close(self, sid: str) -> None:
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)


class UnknownSession(InputError):
    """A request named a session this server does not hold."""
