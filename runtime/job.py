"""Segment one video into an output folder: the per-video job behind `runtime/run.py`.

`segment_video(segmenter, source, mask, output_dir)` takes an already built `Segmenter`, so one
process loads the graphs once and segments many videos (`Segmenter.start` resets every per-video
state). It writes `output_dir/00000.png ...` (palette PNGs at the frames' size, index = object
id), `output_dir/run.json` and optionally an overlay video, following `runtime.media.outputs`' rule:
everything is staged in a hidden folder next to the output and moved in at the end, replacing
only what an earlier run wrote; a failure leaves nothing behind; the output is locked for the
run's life, so a second run into it is refused.

Pipelined: a reader thread decodes and prepares (resizes) the next frames and a writer thread
saves the previous frames' PNGs and overlay while the calling thread runs the graphs; both
queues are small and bounded, so memory stays flat however long the video is. The writer also
logs each frame once its mask is on disk: its run.json record goes, as one JSON line, to an
anonymous temporary file in the staging folder (nothing to clean up, whatever ends the run),
and run.json is streamed from it at the end; a camera's or stream's run.json lists its last
LIVE_LOG_FRAMES frames, kept in memory (its summary counts them all). `segment_video` returns
run.json's fields without the per-frame list. When the run ends, however it ends, the reader is
stopped and joined before `segment_video` returns.
run.json reports the model's FPS (time inside the segmenter) and the end-to-end FPS over the
same frames, and the frames the input declared and those decoded: a video that ends early is
reported with a warning.

Ctrl-C (or SIGTERM inside `runtime.media.outputs.terminate_as_interrupt()`) keeps the frames finished
so far, marks run.json `"interrupted": true` and raises `JobInterrupted`; one that comes while the
last frames are written or the outputs move in waits for that, and the whole run is kept.

Frames of one video keep the first frame's size and colour mode: a frame of another size with
the same aspect ratio is resized to the first frame's size with a warning, one of another
aspect ratio is refused (InputError naming it); a frame whose colour mode differs (e.g. a
grayscale JPEG among RGB ones) is converted to RGB with a warning.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from runtime.core.errors import InputError, MaskError, OutputError, QDMNRuntimeError
from runtime.core.geometry import same_aspect
from runtime.core.manifest import Manifest
from runtime.core.resize import resize_frame
from runtime.media.given import GivenMask, as_given, check_given, read_given_masks
from runtime.media.masks import labels_array, object_ids, read_mask
from runtime.media.outputs import StagedFile, StagedFolder, run_whole
from runtime.media.palette import OverlayWriter, check_overlay_name, save_palette_png
from runtime.media.sources import (
    FolderSource,
    FrameSource,
    open_source,
    truncation_note,
    with_last,
)
from runtime.segmenter import FrameRecord, RunTotals, Segmenter

RUN_LOG = "run.json"
QUEUE_FRAMES = 4  # frames decoded ahead / waiting to be written: enough to hide jitter
LIVE_LOG_FRAMES = 10_000  # run.json of a camera or stream lists its last frames only
_FRAME_PNG = re.compile(r"\d{5,}\.png")


def frame_png(index: int) -> str:
    """File name of frame `index`'s mask in the output folder."""
    return f"{index:05d}.png"


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM stopped a job after some frames: those were kept (see `log`)."""

    def __init__(self, log: dict[str, Any], cause: KeyboardInterrupt):
        super().__init__(f"interrupted after {log['summary']['frames']} frames")
        self.log = log
        self.cause = cause


def check_outputs(output_dir: str | Path, overlay: str | Path | None = None) -> None:
    """Refuse unusable output paths (OutputError) without writing any output (what a killed
    run staged there is removed, as any run into them does): what `segment_video` does first,
    for callers that want to know before loading the graphs."""
    if overlay is not None:
        check_overlay_name(overlay)
    folder, earlier = _staged_folder(Path(output_dir))
    targets: list[StagedFolder | StagedFile] = [folder]
    try:
        if overlay is not None:
            targets.append(StagedFile(overlay))
            check_overlay_owned(Path(output_dir), overlay, earlier)
    finally:
        for t in targets:
            t.abort()


def check_apart(output_dir: str | Path, overlay: str | Path | None,
                inputs: Mapping[str, str | Path | FrameSource | None]) -> None:
    """Refuse (OutputError) an output that is one of the run's inputs (`inputs`: what each is
    called -> its path): masks written among a folder's frames are read back as frames by the
    next run, and an overlay written over the input video replaces it."""
    out = os.path.realpath(output_dir)
    video = os.path.realpath(overlay) if overlay is not None else None
    for what, path in inputs.items():
        if path is None or isinstance(path, FrameSource) or not os.path.exists(path):
            continue  # a camera, a stream, an in-memory source
        real = os.path.realpath(path)
        if real == out:
            raise OutputError(f"output {output_dir} is the {what} {path}: write the masks into "
                              "a folder of their own")
        if real == video:
            raise OutputError(f"overlay {overlay} is the {what} {path}: it would be replaced")


def segment_video(
    segmenter: Segmenter,
    source: str | Path | FrameSource,
    mask: str | Path | np.ndarray | None,
    output_dir: str | Path,
    *,
    masks: str | Path | Mapping[int, GivenMask | np.ndarray] | None = None,
    overlay: str | Path | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment `source` from its first-frame `mask` and/or masks on later frames into
    `output_dir`; return run.json's fields but "frames" (the per-frame records are only in
    `output_dir/run.json`, so that no run holds them all).

    source: folder of frames, video file, camera index ("0"), stream URL, or a FrameSource.
    mask: the first frame's mask: a mask file (see `runtime.media.masks.read_mask`) or (H0, W0)
    uint8 object ids; None when `masks` gives the first one. masks: masks on any frames, a
    folder of `<frame>.png` (runtime.media.given) or frame index -> (H0, W0) ids / GivenMask;
    propagation starts at the first masked frame (earlier frames get empty masks) and each
    given mask replaces the propagated one on its frame (see `propagate`).
    overlay: also write a video of the masks over the frames (.mp4, .avi or .mkv). extra: more
    run.json fields.
    Raises QDMNRuntimeError subclasses (one-line messages) for bad input or unwritable
    outputs, before the first frame wherever they can be known then; JobInterrupted after a
    Ctrl-C/SIGTERM that came once frames were finished (they are kept).
    """
    if max_frames is not None and (isinstance(max_frames, bool) or max_frames < 1):
        raise InputError(f"max_frames={max_frames}: expected >= 1")
    if overlay is not None:
        check_overlay_name(overlay)
    inputs: dict[str, Any] = {"input": source}
    if isinstance(masks, (str, Path)):
        inputs["masks"] = masks
    check_apart(output_dir, overlay, inputs)
    src = source if isinstance(source, FrameSource) else open_source(source)
    given = _given(src, mask, masks, segmenter.manifest)
    if max_frames is not None and (beyond := [i for i in given if i >= max_frames]):
        if len(beyond) == len(given):
            raise MaskError(f"every mask is on a frame that max_frames={max_frames} stops "
                            f"before (frames {beyond[:4]})")
        warnings.warn(f"masks given for frames {beyond[:4]} are not used: max_frames="
                      f"{max_frames} stops before them", stacklevel=2)
    folder, earlier = _staged_folder(Path(output_dir))
    video: StagedFile | None = None
    try:
        if overlay is not None:
            video = StagedFile(overlay)
            check_overlay_owned(Path(output_dir), overlay, earlier)  # with the overlay locked
            overlay_log = written_path(overlay)
        else:  # an earlier run's overlay stays this OUT's, for a later --overlay to replace
            overlay_log = (earlier or {}).get("overlay")
        with contextlib.closing(_FrameLog(folder.path, live=src.live)) as frames:
            log, interrupted = _Run(segmenter, src, given, folder, video, frames, max_frames,
                                    progress).run()
            log = {"input": src.description,
                   "mask": str(mask) if isinstance(mask, (str, Path)) else None,
                   "masks": str(masks) if isinstance(masks, (str, Path)) else None,
                   "given_frames": sorted(given),
                   "overlay": overlay_log,
                   **dict(extra or {}), **log}
            def commit() -> None:
                with (folder.path / RUN_LOG).open("w", encoding="utf-8") as f:
                    f.writelines(dump_run_log(log, frames.lines()))
                if video is not None:
                    video.commit()
                folder.commit()

            held = run_whole(commit)  # a signal held until all was in place: the run is kept
            interrupted = interrupted or held
    except BaseException as e:
        folder.abort()
        if video is not None:
            video.abort()
        if isinstance(e, OSError):
            raise OutputError(f"cannot write the output: {e.strerror or e}") from None
        raise
    if interrupted is not None:
        raise JobInterrupted(log, interrupted)
    return log


def _given(source: FrameSource, mask: str | Path | np.ndarray | None,
           masks: str | Path | Mapping[int, GivenMask | np.ndarray] | None,
           manifest: Manifest) -> dict[int, GivenMask]:
    """Every given mask by frame index, the first-frame `mask` fitted to the first frame when
    it is read; MaskError for a frame given twice or more objects than the graphs hold."""
    if mask is None and masks is None:
        raise MaskError("no mask given: pass the first frame's mask, masks on some frames, "
                        "or both")
    given = {}
    if masks is not None:
        given = (read_given_masks(masks, source) if isinstance(masks, (str, Path))
                 else as_given(masks))
    if mask is not None:
        if 0 in given:
            raise MaskError("frame 0 has a mask twice: as the first mask and among the given "
                            "masks; give it once")
        if isinstance(mask, np.ndarray):
            given[0] = GivenMask(labels_array(mask, "the first mask"), name="the first mask",
                                 fit=True)
        else:
            given[0] = GivenMask(read_mask(mask), name=f"first mask {mask}", fit=True)
    given = dict(sorted(given.items()))
    ids = {o for g in given.values() for o in object_ids(g.labels)}
    manifest.check_object_count(len(ids), "the given masks")
    return given


def _staged_folder(output_dir: Path) -> tuple[StagedFolder, dict[str, Any] | None]:
    """OUT staged (and locked), with the run.json an earlier run left there (`_earlier_log`),
    read once under the lock for both the files that run owns and its overlay."""
    earlier: dict[str, Any] | None = None

    def owned() -> set[str]:
        nonlocal earlier
        earlier = _earlier_log(output_dir)
        return _owned(output_dir, earlier)

    folder = StagedFolder(output_dir, index=RUN_LOG, owned=owned,
                          reserved=lambda name: bool(_FRAME_PNG.fullmatch(name)))
    return folder, earlier


def _earlier_log(output_dir: Path) -> dict[str, Any] | None:
    """The run.json an earlier run left in `output_dir` (None: none), its per-frame list
    replaced by `listed_beyond`: the frames it lists past the ones it counts (none, from this
    version on), so that a long video's list is not held through the run (it is parsed, then
    dropped). OutputError for a run.json that is not one of ours, which no run may replace."""
    log = output_dir / RUN_LOG
    if not log.is_file():
        return None

    def frame_number(x: Any) -> int:
        if not isinstance(x, int) or isinstance(x, bool) or x < 0:
            raise ValueError(f"{x!r} is not a frame number")
        return x

    try:
        data = json.loads(log.read_text())
        count = frame_number(data["summary"]["frames"])
        listed = (frame_number(f["frame"]) for f in data.pop("frames"))
        return {**data, "listed_beyond": {i for i in listed if i >= count}}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{log} is not a run log of runtime/run.py ({e}): refusing to "
                          "overwrite it; choose another output folder") from None


def _owned(output_dir: Path, earlier: dict[str, Any] | None) -> set[str]:
    """The files an earlier run wrote into `output_dir`, from its run.json `earlier`
    (`_earlier_log`): the frames it counts (0 ..) and those it lists (a live run lists its last
    ones), among the files there, so that the set is never larger than the folder."""
    if earlier is None:
        return set()
    count, beyond = earlier["summary"]["frames"], earlier["listed_beyond"]

    def written(name: str) -> bool:
        if not _FRAME_PNG.fullmatch(name):
            return False
        i = int(name[:-4])
        return name == frame_png(i) and (i < count or i in beyond)  # not 000001.png

    return {RUN_LOG} | {name for name in os.listdir(output_dir) if written(name)}


def written_path(path: str | Path) -> str:
    """The file a staged output replaces at `path`: its folder's real path and its own name
    (os.replace replaces a link there, it does not follow it)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


def check_overlay_owned(output_dir: Path, overlay: str | Path,
                        earlier: dict[str, Any] | None) -> None:
    """Refuse (OutputError) to replace a file at the overlay path that no earlier run into
    `output_dir` wrote, as for OUT's own files; `earlier`: its run.json (`_earlier_log`). Owned:
    the overlay that names; one in OUT itself (the corpus runner's OUT/<video>/overlay.mp4) when
    OUT holds a run.json; any, for a run.json from before runs named their overlay (those
    replaced it unasked)."""
    target = written_path(overlay)
    if not os.path.lexists(target):
        return
    if earlier is not None and (
            "overlay" not in earlier or earlier["overlay"] == target
            or os.path.dirname(target) == os.path.realpath(output_dir)):
        return
    raise OutputError(f"overlay {overlay} exists and no earlier run into {output_dir} wrote "
                      "it: remove it or choose another name")


def check_mask(mask: np.ndarray, frame: np.ndarray, name: str, manifest: Manifest) -> None:
    """The first mask fits the first frame (same aspect ratio) and the graphs' object count."""
    (mh, mw), (fh, fw) = mask.shape, frame.shape[:2]
    if not same_aspect((mh, mw), (fh, fw)):
        raise MaskError(f"{name} is {mw}x{mh} but the frames are {fw}x{fh} (another aspect "
                        "ratio): is it the mask of this video?")
    manifest.check_object_count(len(object_ids(mask)), name)


# ------------------------------------------------------------------------------ pipeline
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _FrameChecks:
    """Every frame keeps the first frame's size and colour mode (see the module docstring)."""

    def __init__(self, source: FrameSource):
        self.source = source
        self.size: tuple[int, int] | None = None
        self.mode: str | None = None
        self.warned_size = self.warned_mode = False

    def _name(self, i: int) -> str:
        if isinstance(self.source, FolderSource):
            return f"frame {self.source.files[i].name}"
        return f"frame {i}"

    def _mode(self, i: int) -> str | None:
        if not isinstance(self.source, FolderSource):
            return None  # decoded by OpenCV: always BGR
        try:
            with Image.open(self.source.files[i]) as im:  # reads the header only
                return im.mode
        except (OSError, UnidentifiedImageError):
            return None

    def __call__(self, i: int, frame: np.ndarray) -> np.ndarray:
        mode = self._mode(i)
        if i == 0:
            self.size, self.mode = frame.shape[:2], mode
            return frame
        if mode != self.mode and mode is not None and not self.warned_mode:
            self.warned_mode = True
            warnings.warn(f"{self._name(i)} has colour mode {mode}, the first frame {self.mode}: "
                          "converted to RGB (later mode changes are not reported)", stacklevel=2)
        assert self.size is not None
        (h, w), (fh, fw) = self.size, frame.shape[:2]
        if (fh, fw) == (h, w):
            return frame
        if not same_aspect((fh, fw), (h, w)):
            raise InputError(f"{self._name(i)} is {fw}x{fh} but the first frame is {w}x{h} "
                             "(another aspect ratio): the frames of one video must share a size")
        if not self.warned_size:
            self.warned_size = True
            warnings.warn(f"{self._name(i)} is {fw}x{fh}, the first frame {w}x{h}: resizing it "
                          f"(and any later frame of another size) to {w}x{h}", stacklevel=2)
        return resize_frame(frame, h, w)


class _FrameLog:
    """run.json's per-frame records as JSON lines, kept out of memory: spooled to an anonymous
    temporary file in `folder` (the system removes it however the run ends, and it is never
    among the outputs); for a live source, which runs for ever, its last LIVE_LOG_FRAMES lines
    in memory instead."""

    def __init__(self, folder: Path, *, live: bool):
        self.recent: collections.deque[str] | None = None
        self.spool: IO[str] | None = None
        if live:
            self.recent = collections.deque(maxlen=LIVE_LOG_FRAMES)
        else:
            self.spool = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                "w+", encoding="utf-8", dir=folder)

    def append(self, record: FrameRecord) -> None:
        if self.spool is None:
            assert self.recent is not None
            self.recent.append(frame_line(record))
        else:
            self.spool.write(frame_line(record) + "\n")

    def lines(self) -> Iterator[str]:
        """The logged records in order, one JSON line each (without its newline)."""
        if self.spool is None:
            assert self.recent is not None
            yield from self.recent
            return
        self.spool.seek(0)
        for line in self.spool:
            yield line.rstrip("\n")

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


class _Writer(threading.Thread):
    """Saves (index, frame, labels, record) items in order: PNG, then the overlay frame, then
    the record into the log and the totals, so that both count only frames on disk."""

    def __init__(self, folder: StagedFolder, overlay: OverlayWriter | None, log: _FrameLog):
        super().__init__(name="qdmn-writer", daemon=True)
        self.folder, self.overlay, self.log = folder, overlay, log
        self.items: queue.Queue[tuple[int, np.ndarray, np.ndarray, FrameRecord] | None] = (
            queue.Queue(QUEUE_FRAMES))
        self.error: BaseException | None = None
        self.totals = RunTotals()
        self.written = 0  # frames 0..written-1 are on disk

    def run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is not None:
                continue  # keep draining so that put() never blocks
            i, frame, labels, record = item
            try:
                save_palette_png(labels, self.folder.path / frame_png(i),
                                 self.folder.target / frame_png(i))
                if self.overlay is not None:
                    self.overlay.write(frame, labels)
                self.log.append(record)
                self.totals.add(record)
                self.written = i + 1
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e

    def put(self, out: Propagated) -> None:
        self._raise()
        self.items.put((out.index, out.frame, out.labels, out.record))

    def finish(self) -> None:
        self.items.put(None)
        self.join()
        if self.overlay is not None:
            self.overlay.close()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class _Reader:
    """A thread that decodes, checks and prepares the next frames of a source into a small
    queue, until the source ends or `close` stops it."""

    def __init__(self, segmenter: Segmenter, source: FrameSource, max_frames: int | None):
        self.seg, self.source, self.max_frames = segmenter, source, max_frames
        self.frames: queue.Queue[Any] = queue.Queue(QUEUE_FRAMES)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, name="qdmn-reader", daemon=True)
        self.decoded = 0  # frames the reader got from the source

    def _read(self) -> None:
        checks = _FrameChecks(self.source)
        try:
            for i, frame in enumerate(self.source):
                if self.max_frames is not None and i >= self.max_frames:
                    break
                self.decoded = i + 1
                frame = checks(i, frame)
                if not self._put((frame, self.seg.prepare(frame))):
                    return
            else:
                self._check_length()
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
            self._put(_Failed(e))

    def _check_length(self) -> None:
        """A video that ends before the frame count its container declares is damaged or
        truncated: say so rather than segment part of it silently."""
        note = truncation_note(self.source, self.decoded)
        if note is not None:
            warnings.warn(f"{note} (both counts are in run.json)", stacklevel=2)

    def _put(self, item: object) -> bool:
        """Queue an item unless the consumer stopped the reader (then False)."""
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.thread.start()
        while (item := self.frames.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the reader and wait for it: a thread still inside native decoding when the
        interpreter exits aborts the process (SIGABRT) after the error was printed."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


@dataclass
class Propagated:
    """One frame's result. record: the segmenter's log of it; for a frame before the first
    given mask (nothing ran, its labels are empty) one that says so."""

    index: int
    frame: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8 object ids
    record: FrameRecord


def propagate(segmenter: Segmenter, source: str | Path | FrameSource,
              given: Mapping[int, GivenMask | np.ndarray], *, start: int = 0,
              max_frames: int | None = None, stop: threading.Event | None = None,
              ) -> Iterator[Propagated]:
    """Segment `source` from the masks `given` on some of its frames (frame index -> mask at
    the frame's size; see runtime.media.given): the loop `segment_video` and the app share.

    Frames before the first given frame that marks an object have none (empty labels; a given
    mask there without one says no more). A given frame's mask replaces the propagated one for
    the ids it decides and is pinned in the memory as a reference (`Segmenter.reference`).
    Frames before `start` are decoded but not segmented or yielded: the given ones among them
    become the memory's references (objects a mask does not decide are absent on its frame, as
    nothing was propagated there), so propagating again from a corrected frame t is `start=t`.
    `start` is therefore a given frame, or at most the first one (InputError otherwise: there
    would be no previous frame to continue from). `stop` set ends the run after the current
    frame (during the replay before `start` too); closing the generator stops its reader thread.
    """
    masks = as_given(given)
    if not masks:
        raise MaskError("no mask given: at least one frame needs a mask")
    first = next((i for i, g in masks.items() if object_ids(g.labels)), None)
    if first is None:
        raise MaskError("no given mask marks an object: at least one frame needs one")
    # masks before the first with an object say "absent here", as every frame before it is
    masks = {i: g for i, g in masks.items() if i >= first}
    if isinstance(start, bool) or start < 0:
        raise InputError(f"start={start}: expected a frame index >= 0")
    if start not in masks and start > min(masks):
        raise InputError(f"start={start}: propagation starts from a frame with a given mask, "
                         f"or from one up to the first ({min(masks)}); frame {start} has none")
    src = source if isinstance(source, FrameSource) else open_source(source)
    if src.length is not None and (late := [i for i in masks if i >= src.length]):
        raise MaskError(f"masks given for frames {late[:4]} but {src.description} has frames "
                        f"0..{src.length - 1}")
    reader = _Reader(segmenter, src, max_frames)
    started = False
    try:
        items = reader if src.live else with_last(reader)
        for i, item in enumerate(items):
            if stop is not None and stop.is_set():
                return
            (frame, image), is_last = (item, False) if src.live else item
            g = masks.get(i)
            if g is not None:
                if not started:
                    name = g.name or f"the mask of frame {i}"
                    if g.fit:
                        check_mask(g.labels, frame, name, segmenter.manifest)
                    else:
                        check_given(g, frame.shape[:2], i)
                    labels = segmenter.start(frame, g.labels, image=image, index=i)
                    started = True
                else:
                    check_given(g, frame.shape[:2], i)
                    labels = segmenter.reference(frame, g.labels, objects=g.objects, index=i,
                                                 image=image, propagate=i >= start)
            elif i < start:
                continue
            elif not started:
                labels = np.zeros(frame.shape[:2], np.uint8)
            else:
                labels = segmenter.step(frame, last=is_last, image=image, index=i)
            if i < start:
                continue
            record = segmenter.last_record if g is not None or started else None
            assert g is None or record is not None
            yield Propagated(i, frame, labels, record or FrameRecord.empty(i))
    finally:
        reader.close()


class _Run:
    """One video through `propagate`, with a writer thread."""

    def __init__(self, segmenter: Segmenter, source: FrameSource, given: Mapping[int, GivenMask],
                 folder: StagedFolder, video: StagedFile | None, log: _FrameLog,
                 max_frames: int | None, progress: bool):
        self.seg, self.source, self.given = segmenter, source, given
        self.max_frames = max_frames
        self.progress = progress
        self.decoded = 0
        self.writer = _Writer(folder, None if video is None
                              else OverlayWriter(video.path, source.fps, video.target), log)

    def run(self) -> tuple[dict[str, Any], KeyboardInterrupt | None]:
        """run.json's fields but "frames" (the writer logs those into the `_FrameLog`), and the
        interrupt that stopped the run early (if any)."""
        seg = self.seg
        interrupted: KeyboardInterrupt | None = None
        total = self.source.length
        if self.max_frames is not None:
            total = min(total, self.max_frames) if total else self.max_frames
        bar = tqdm(total=total, unit="frame", disable=not self.progress, dynamic_ncols=True)
        t_start = time.perf_counter()
        t_first: float | None = None
        self.writer.start()
        try:
            frames = propagate(seg, self.source, self.given, max_frames=self.max_frames)
            with contextlib.closing(frames):  # its reader is joined however the loop ends
                for out in frames:
                    self.decoded = out.index + 1
                    rec = out.record
                    if t_first is None and rec.kind != "empty":
                        t_first = time.perf_counter()
                    self.writer.put(out)
                    bar.update(1)
                    if rec.kind == "propagated":
                        bar.set_postfix(model_fps=f"{1e3 / max(rec.ms['total'], 1e-6):.1f}",
                                        mem=len(seg.policy), refresh=False)
        except KeyboardInterrupt as e:
            interrupted = e
        except BaseException:
            try:
                self.writer.finish()  # closes the overlay file before it is removed
            except BaseException:  # noqa: BLE001, S110 - the first error is reported
                pass
            raise
        finally:
            bar.close()
        # the writer drains whole; a signal meanwhile ends the run with all its frames kept
        held = run_whole(self.writer.finish)
        interrupted = interrupted or held
        if not self.writer.written:
            if interrupted is not None:
                raise interrupted
            raise InputError(f"{self.source.description}: no frames")
        t_end = time.perf_counter()
        log = run_log(seg, self.source, self.writer.totals, interrupted is not None,
                      decoded=self.decoded,
                      wall=(t_end - t_start, t_end - (t_first or t_end)))
        return log, interrupted


def run_log(segmenter: Segmenter, source: FrameSource, totals: RunTotals, interrupted: bool, *,
            decoded: int | None = None, wall: tuple[float, float] | None = None,
            ) -> dict[str, Any]:
    """run.json's fields for the frames `totals` counts: settings, graphs, objects, summary;
    the per-frame records ("frames") follow them in `dump_run_log`.

    wall: (seconds of the whole run, seconds from the first segmented frame's result to the
    last frame's end), for the end-to-end FPS over the frames the model FPS counts."""
    seg, m = segmenter, segmenter.manifest
    summary = totals.summary()
    if wall is not None:
        summary.update(wall_s=round(wall[0], 3),
                       wall_fps=(round(totals.steps / wall[1], 3)
                                 if totals.steps and wall[1] > 0 else None))
    return {
        "backend": seg.backend.describe(), "config": asdict(seg.config),
        "manifest": {k: getattr(m, k) for k in (
            "height", "width", "max_objects", "memory_size", "top_k", "precision",
            "checkpoint_sha256")},
        "objects": list(seg.object_ids), "first_score": _finite(seg.first_score),
        # what the container declares (None for live sources) and what was decoded
        "input_frames": {"declared": source.length, "decoded": decoded},
        "interrupted": interrupted,
        "summary": summary,
    }


def frame_line(record: FrameRecord) -> str:
    """One frame's record in run.json: a JSON line (no newline inside)."""
    return json.dumps(record.to_dict())


def dump_run_log(log: Mapping[str, Any], frames: Iterable[str]) -> Iterator[str]:
    """run.json's text in pieces: `log`'s fields (`run_log`), then "frames", one record per
    line (`frame_line`), so that a writer streams records it never holds all at once."""
    head = json.dumps(dict(log), indent=1)
    yield head[:-2] + ',\n "frames": ['  # json.dumps(indent=1) ends an object with "\n}"
    sep = "\n  "
    for line in frames:
        yield sep + line
        sep = ",\n  "
    yield "\n ]\n}\n"


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


__all__ = ["RUN_LOG", "GivenMask", "JobInterrupted", "Propagated", "QDMNRuntimeError",
           "check_apart", "check_mask", "check_outputs", "dump_run_log", "frame_line", "frame_png",
           "propagate", "run_log", "segment_video"]
