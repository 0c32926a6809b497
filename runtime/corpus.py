"""The videos of a corpus, whether each is already done, and the summary of a corpus run.

Used by `runtime/batch.py` (the Ray corpus runner); Ray-free, so it is testable on its own.

A corpus is a DAVIS-layout root (`runtime.media.davis.DavisLayout`: `JPEGImages/480p/<video>/`
frames and `Annotations/480p/<video>/`, whose first PNG is the first-frame mask; where that PNG
is on a later frame, the annotation folder is taken as masks on any frames) or a CSV/JSON
list of (input, mask[, name]) entries: input a folder of frames or a video file, mask its first
frame's PNG or a folder of masks on any frames (`runtime.media.given`; a root's videos take
their whole annotation folder so with `every_mask`), relative paths taken from the list's
folder. Each video is written to `OUT/<name>/` exactly as `runtime/run.py`
writes one video; its run.json carries a `batch` key (graph hashes, settings, input, mask
hash), so a rerun skips the videos already complete for the same key and redoes the rest.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.core.errors import OutputError, QDMNRuntimeError
from runtime.core.manifest import Manifest, file_sha256
from runtime.job import RUN_LOG
from runtime.media.davis import DavisLayout
from runtime.media.outputs import STAGING, OutputLock, remove_stale_staging, write_atomic
from runtime.media.sources import frame_files, in_name_order

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
TOOL = "runtime/batch.py"  # marks the summary files this tool wrote (and may replace)
OVERLAY = "overlay.mp4"  # OUT/<name>/overlay.mp4, staged as OUT/<name>/.overlay.partial-*.mp4
STATUSES = ("done", "skipped", "failed", "interrupted", "not run")


class CorpusError(QDMNRuntimeError):
    """The --videos root or list is missing, empty or malformed."""


@dataclass(frozen=True)
class Video:
    """One video of the corpus; its output goes to `OUT/<name>/`."""

    name: str
    input: Path  # folder of frames or video file
    mask: Path  # first-frame mask, or a folder of masks on any frames (runtime.media.given)


# ------------------------------------------------------------------------------- listing
def list_videos(source: str | Path, every_mask: bool = False) -> list[Video]:
    """The videos of a DAVIS-layout root or of a .csv/.json list (see the module docstring).
    every_mask: a root's videos take every annotation as a given mask (the YouTube-VOS layout,
    where an object's first mask is on the frame it appears), not only the first."""
    path = Path(source)
    if path.is_dir():
        videos = _davis_videos(path, every_mask)
    elif path.is_file() and path.suffix.lower() in (".csv", ".json"):
        videos = _listed_videos(path)
    elif not path.exists():
        raise CorpusError(f"--videos {path} not found")
    else:
        raise CorpusError(f"--videos {path}: expected a DAVIS-layout folder or a .csv/.json list")
    if not videos:
        raise CorpusError(f"--videos {path} lists no video")
    _check_names(videos, path)
    return videos


def _davis_videos(root: Path, every_mask: bool) -> list[Video]:
    layout = DavisLayout(root)
    if not layout.frames_root.is_dir():
        raise CorpusError(f"--videos {root} is not a DAVIS-layout root (no "
                          f"{layout.frames_root.relative_to(root)}/ in it) nor a .csv/.json list "
                          "of videos")
    videos = []
    for folder in sorted(p for p in layout.frames_root.iterdir() if p.is_dir()):
        masks = layout.annotations_dir(folder.name)
        first = next(iter(in_name_order(masks.glob("*.png"))), masks / "00000.png")
        frames = [p.stem for p in frame_files(folder)]
        # a first annotation on a later frame is that frame's mask, not the first frame's
        later = masks.is_dir() and bool(frames) and first.stem != frames[0]
        videos.append(Video(folder.name, folder.absolute(),
                            (masks if every_mask or later else first).absolute()))
    return videos


def _listed_videos(path: Path) -> list[Video]:
    base = path.parent
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read --videos {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CorpusError(f"--videos {path} is not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise CorpusError(f"--videos {path}: expected a JSON list of entries")
        rows = [_json_entry(item, path, i) for i, item in enumerate(data)]
    else:
        rows = []
        for n, row in enumerate(csv.reader(text.splitlines()), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if n == 1 and [c.lower() for c in cells[:2]] == ["input", "mask"]:
                continue  # header
            if len(cells) not in (2, 3) or not all(cells):
                raise CorpusError(f"--videos {path} line {n}: expected input,mask[,name]")
            rows.append((cells[0], cells[1], cells[2] if len(cells) == 3 else None))
    videos = []
    for inp, mask, name in rows:
        if "://" in inp or (inp.isdigit() and not (base / inp).exists()):
            raise CorpusError(f"--videos {path}: {inp} is a live source; the corpus runner "
                              "takes video files and frame folders (runtime/run.py takes streams)")
        src = (base / inp).absolute()
        default = src.name if src.is_dir() else src.stem
        videos.append(Video(name or default, src, (base / mask).absolute()))
    return videos


def _json_entry(item: object, path: Path, i: int) -> tuple[str, str, str | None]:
    if isinstance(item, Mapping) and isinstance(item.get("input"), str) \
            and isinstance(item.get("mask"), str) and set(item) <= {"input", "mask", "name"}:
        name = item.get("name")
        if name is None or isinstance(name, str):
            return item["input"], item["mask"], name
    if isinstance(item, list) and len(item) in (2, 3) and all(isinstance(x, str) for x in item):
        return item[0], item[1], item[2] if len(item) == 3 else None
    raise CorpusError(f"--videos {path} entry {i}: expected {{\"input\": ..., \"mask\": ..., "
                      "\"name\": optional}} or [input, mask(, name)]")


def _check_names(videos: Sequence[Video], source: Path) -> None:
    seen: dict[str, Video] = {}
    for v in videos:
        if (not v.name or v.name.startswith(".") or STAGING in v.name
                or re.search(r"[/\\\x00]", v.name) or v.name in (SUMMARY_JSON, SUMMARY_CSV)):
            raise CorpusError(f"--videos {source}: {v.name!r} cannot name an output folder "
                              "(no '/', no leading '.', not summary.json/csv)")
        if v.name in seen:
            raise CorpusError(f"--videos {source}: {seen[v.name].input} and {v.input} would both "
                              f"write {v.name}/: give them distinct names")
        seen[v.name] = v


# --------------------------------------------------------------------------------- resume
def engine_fingerprint(manifest: Manifest) -> dict[str, str]:
    """The sha256 the manifest records per graph (and per built engine): what the masks depend
    on besides the settings. Manifest.load has checked the graph files against them."""
    out = {}
    for g in manifest.graphs.values():
        out[g.file] = g.sha256
        if g.engine and g.engine_sha256:
            out[g.engine] = g.engine_sha256
    return out


def video_key(fingerprint: Mapping[str, str], settings: Mapping[str, Any],
              video: Video) -> dict[str, Any]:
    """What a video's output depends on; stored in its run.json as `batch`."""
    if video.mask.is_dir():  # masks on any frames: each file's name and content
        files = sorted(p for p in video.mask.glob("*.png") if p.is_file())
        mask: str | None = hashlib.sha256("".join(
            f"{p.name}:{file_sha256(p)}\n" for p in files).encode(errors="surrogateescape")
        ).hexdigest()
    else:
        mask = file_sha256(video.mask) if video.mask.is_file() else None
    return {"engine": dict(fingerprint), "settings": dict(settings), "input": str(video.input),
            "mask_sha256": mask}


def completed_log(output: Path, video: Video, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run.json of an earlier complete run of this video with the same key, else None."""
    path = output / video.name / RUN_LOG
    try:
        log = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(log, dict) and not log.get("interrupted", True) and log.get("batch") == key:
        return log
    return None


def remove_staging(output: Path, name: str) -> None:
    """Remove what a killed worker left of video `name`: its hidden staging folder/overlay
    and their lock files (only names runtime.media.outputs gives them) and `OUT/<name>/` if that is
    left empty. Each under its lock, taken over from the dead holder; one a live run holds
    is left alone."""
    folder = output / name
    for target, is_folder in ((folder / OVERLAY, False), (folder, True)):
        if target.parent.is_dir():
            with contextlib.suppress(OutputError):  # held: a live run's, not ours to remove
                lock = OutputLock(target)  # a dead holder's file, taken over
                try:
                    remove_stale_staging(target, folder=is_folder)
                finally:
                    lock.release()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# -------------------------------------------------------------------------------- summary
@dataclass
class Outcome:
    """One video's line in summary.json / summary.csv."""

    name: str
    status: str  # one of STATUSES
    frames: int | None = None
    model_fps: float | None = None  # propagated frames per second inside the segmenter
    wall_fps: float | None = None  # end to end (decode, model, PNG writing)
    insertions: int | None = None
    evictions: int | None = None
    cpu_s: float | None = None  # CPU time of the worker process (all its threads) on it
    attempts: int = 0  # 2 when its worker died once and it was retried
    worker: str | None = None  # node:pid that segmented it
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    input: str = ""
    mask: str = ""

    @classmethod
    def from_log(cls, video: Video, status: str, log_summary: Mapping[str, Any],
                 **kw: Any) -> Outcome:
        s = log_summary
        return cls(video.name, status, frames=s.get("frames"), model_fps=s.get("fps"),
                   wall_fps=s.get("wall_fps"), insertions=s.get("insertions"),
                   evictions=s.get("evictions"), input=str(video.input), mask=str(video.mask),
                   **kw)


def check_summary_target(output: Path) -> None:
    """Refuse (OutputError) summary files in OUT that this tool did not write."""
    js, cs = output / SUMMARY_JSON, output / SUMMARY_CSV
    ours = False
    if js.exists():
        try:
            ours = json.loads(js.read_text()).get("tool") == TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise OutputError(f"{js} was not written by {TOOL}: refusing to overwrite it; "
                              "choose another output folder")
    if cs.exists() and not ours:
        raise OutputError(f"{cs} was not written by {TOOL}: refusing to overwrite it; "
                          "choose another output folder")


CSV_FIELDS = ("name", "status", "frames", "model_fps", "wall_fps", "insertions", "evictions",
              "cpu_s", "attempts", "worker", "error", "warnings")


def write_summary(output: Path, run: Mapping[str, Any], outcomes: Iterable[Outcome]) -> Path:
    """summary.json (run-level numbers + one entry per video) and summary.csv (one row per
    video), each replaced atomically."""
    rows = [asdict(o) for o in outcomes]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    doc = {"tool": TOOL, **run, "counts": counts, "videos": rows}
    write_atomic(output / SUMMARY_JSON, json.dumps(doc, indent=1))
    lines: list[list[Any]] = [list(CSV_FIELDS)]
    lines += [["" if r[f] is None else " | ".join(r[f]) if isinstance(r[f], list) else r[f]
               for f in CSV_FIELDS] for r in rows]
    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    write_atomic(output / SUMMARY_CSV, buf.getvalue())
    return output / SUMMARY_JSON


