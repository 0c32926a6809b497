"""Masks on any frame (`runtime/run.py --masks DIR`, `segment_video(masks=...)`, the corpus'
mask folders): objects that first appear later, corrections, the bank's pinned references, and
the refusals.

The tracking checks run the shipped model's graphs on the demo's two-object clip (real DAVIS
frames where ../shared is here, else the generated clip with exact masks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs
from conftest import TWO
from PIL import Image

from evaluation.metrics import jaccard
from runtime.core.errors import MaskError, TooManyObjectsError
from runtime.core.memory_policy import MemoryPolicy, bank_capacity
from runtime.corpus import Video, list_videos, video_key
from runtime.job import segment_video
from runtime.media.given import GivenMask, read_given_masks
from runtime.media.masks import MaskMode, read_labels
from runtime.media.palette import save_palette_png
from runtime.media.sources import FrameSource
from runtime.segmenter import Segmenter

FRAMES = 14
LATE = 6  # the frame object 2 first appears on / the corrected frame


@pytest.fixture(scope="module")
def shipped(request) -> Path:
    return rs.shipped_engine(request)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """The first FRAMES frames of the two-object demo clip and their ground truth."""
    layout = rs.demo_layout()
    d = tmp_path_factory.mktemp("two")
    truth = []
    for p in sorted(layout.frames_dir(TWO).glob("*.jpg"))[:FRAMES]:
        shutil.copy(p, d / p.name)
        truth.append(read_labels(layout.annotation(TWO, p), MaskMode.GROUND_TRUTH))
    return d, truth


def write_masks(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, labels in masks.items():
        save_palette_png(labels, folder / f"{stem}.png")
    return folder


def only(labels: np.ndarray, obj: int) -> np.ndarray:
    return np.where(labels == obj, obj, 0).astype(np.uint8)


def outputs(out: Path) -> list[np.ndarray]:
    return [np.array(Image.open(out / f"{i:05d}.png")) for i in range(FRAMES)]


def ious(preds: list[np.ndarray], truth: list[np.ndarray], obj: int, frames: range) -> np.ndarray:
    return np.array([float(jaccard(truth[t] == obj, preds[t] == obj)) for t in frames])


def test_an_object_that_first_appears_later_is_absent_before_and_tracked_after(shipped, clip,
                                                                             tmp_path):
    frames, truth = clip
    masks = write_masks(tmp_path / "masks", {"00000": only(truth[0], 1),
                                             f"{LATE:05d}": only(truth[LATE], 2)})
    with Segmenter(shipped, backend="ort-cpu") as seg:
        log = segment_video(seg, frames, None, tmp_path / "out", masks=masks)
    preds = outputs(tmp_path / "out")
    assert not any((p == 2).any() for p in preds[:LATE])
    assert (preds[LATE] == only(truth[LATE], 2))[truth[LATE] == 2].all()  # given, as given
    after = ious(preds, truth, 2, range(LATE + 1, FRAMES))
    assert after.mean() > 0.5, after
    assert ious(preds, truth, 1, range(1, FRAMES)).mean() > 0.5
    assert log["objects"] == [1, 2] and log["given_frames"] == [0, LATE]
    records = rs.run_frames(tmp_path / "out")
    kinds = [f["kind"] for f in records]
    assert kinds[0] == "first" and kinds[LATE] == "given" and kinds.count("propagated") == 12
    assert records[LATE]["decision"]["given"]


def test_a_correction_changes_the_frames_after_it_and_not_those_before(shipped, clip, tmp_path):
    frames, truth = clip
    plain = write_masks(tmp_path / "plain", {"00000": truth[0]})
    fixed = write_masks(tmp_path / "fixed", {"00000": truth[0], f"{LATE:05d}": truth[LATE]})
    with Segmenter(shipped, backend="ort-cpu") as seg:
        segment_video(seg, frames, None, tmp_path / "a", masks=plain)
        segment_video(seg, frames, None, tmp_path / "b", masks=fixed)
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    for t in range(LATE):
        assert (a[t] == b[t]).all(), t
    assert (b[LATE] == truth[LATE]).all()
    assert any((a[t] != b[t]).any() for t in range(LATE + 1, FRAMES))


def test_frames_before_the_first_mask_are_empty_and_propagation_starts_there(shipped, clip,
                                                                            tmp_path):
    frames, truth = clip
    masks = write_masks(tmp_path / "m", {f"{LATE:05d}": truth[LATE]})
    with Segmenter(shipped, backend="ort-cpu") as seg:
        log = segment_video(seg, frames, None, tmp_path / "out", masks=masks)
    preds = outputs(tmp_path / "out")
    assert not any(p.any() for p in preds[:LATE])
    assert ious(preds, truth, 1, range(LATE + 1, FRAMES)).mean() > 0.5
    records = rs.run_frames(tmp_path / "out")
    assert [f["kind"] for f in records[:LATE + 1]] == ["empty"] * LATE + ["first"]
    assert log["summary"]["frames"] == FRAMES


def test_every_frame_given_keeps_the_bank_its_fixed_size(shipped, clip, tmp_path):
    """Given frames are pinned references, but never more than the bank holds: the oldest is
    demoted to an ordinary entry, and Algorithm 1 evicts it when room is needed."""
    frames, truth = clip
    masks = write_masks(tmp_path / "m", {f"{t:05d}": truth[t] for t in range(FRAMES)})
    with Segmenter(shipped, backend="ort-cpu") as seg:
        segment_video(seg, frames, None, tmp_path / "out", masks=masks)
        capacity = bank_capacity(seg.policy.memory_size)
        pinned = [e for e in seg.policy.entries if e.pinned]
        assert len(pinned) == seg.policy.max_pinned
    records = rs.run_frames(tmp_path / "out")
    assert all(len(f["slots"]) <= capacity for f in records)
    decisions = [f["decision"] for f in records[1:]]
    assert all(d["given"] and d["accepted"] for d in decisions)
    assert any(d["demoted"] is not None for d in decisions)
    assert any(d["evicted"] is not None for d in decisions)
    for p, t in zip(outputs(tmp_path / "out"), truth):
        assert (p == t).all()


def test_pin_never_evicts_a_pinned_reference():
    policy = MemoryPolicy(4, 1, 0.0, max_pinned=2)
    policy.start(0)
    for f in (1, 2, 3, 4):  # fill the bank with ordinary frames
        policy.decide(f, 1.0)
    first = policy.pin(5)
    assert first.given and first.evicted is not None and first.evicted.frame == 1
    second = policy.pin(6)
    third = policy.pin(7)  # a third pin demotes the oldest pinned (frame 5)
    assert third.demoted == 5 and second.demoted is None
    pinned = sorted(e.frame for e in policy.entries if e.pinned)
    assert pinned == [6, 7]
    for f in range(8, 30):  # ordinary frames cycle through the unpinned slots only
        policy.decide(f, 0.1)
        assert {6, 7} <= {e.frame for e in policy.entries}
    assert MemoryPolicy(1, 1, 0.0).max_pinned == 0  # one slot: a given frame is ordinary
    one = MemoryPolicy(1, 1, 0.0)
    one.start(0)
    assert one.pin(1).index is not None and not one.entries[0].pinned


def test_run_py_masks_end_to_end(shipped, clip, tmp_path):
    frames, truth = clip
    masks = write_masks(tmp_path / "m", {"00000": only(truth[0], 1),
                                         f"{LATE:05d}": only(truth[LATE], 2)})
    r = rs.run_cli("--engine-dir", shipped, "--input", frames, "--masks", masks, "--output",
                tmp_path / "out", "--max-frames", LATE + 3, "--quiet")
    assert r.returncode == 0, r.stderr
    log = json.loads((tmp_path / "out" / "run.json").read_text())
    assert log["masks"] == str(masks) and log["given_frames"] == [0, LATE]
    assert len(list((tmp_path / "out").glob("*.png"))) == LATE + 3


@pytest.mark.parametrize("case", ["size", "name", "twice", "empty"])
def test_bad_given_masks_are_one_line(shipped, clip, tmp_path, case):
    frames, truth = clip
    h, w = truth[0].shape
    masks = {"size": {"00000": truth[0], "00003": np.ones((h // 2, w // 2), np.uint8)},
             "name": {"00000": truth[0], "frame-x": truth[1]},
             "twice": {"00000": truth[0]},
             "empty": {"00000": truth[0], "00002": np.zeros((h, w), np.uint8)}}[case]
    args: list[str | Path] = ["--engine-dir", shipped, "--input", frames, "--output",
                              tmp_path / "out", "--quiet"]
    args += ["--masks", write_masks(tmp_path / "m", masks)]
    if case == "twice":
        args += ["--mask", rs.demo_layout().annotation(TWO, "00000")]
    r = rs.run_cli(*args)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), r.stderr
    expected = {"size": "00003.png is", "name": "frame-x.png is not named after a frame",
                "twice": "frame 0 has a mask twice",
                "empty": "00002.png marks no object"}[case]
    assert expected in err[0], err
    assert not (tmp_path / "out").exists()


def test_more_objects_than_the_graphs_hold_over_all_given_masks(request, clip, tmp_path):
    engine = rs.cached_engine(request)[1]  # exported for 2 objects
    frames, truth = clip
    third = truth[LATE].copy()
    third[: 10, : 10] = 3
    with Segmenter(engine, backend="ort-cpu") as seg, pytest.raises(TooManyObjectsError):
        segment_video(seg, frames, None, tmp_path / "out",
                      masks={0: truth[0], LATE: third})
    assert not (tmp_path / "out").exists()


def test_reference_refuses_ids_it_was_not_given_to_decide(shipped, clip):
    frames, truth = clip
    frame = np.array(Image.open(min(frames.glob("*.jpg"))).convert("RGB"))
    with Segmenter(shipped, backend="ort-cpu") as seg:
        seg.start(frame, only(truth[0], 1))
        with pytest.raises(MaskError, match=r"ids \[2\]"):
            seg.reference(frame, truth[0], objects=(1,))
        labels = seg.reference(frame, only(truth[0], 2), objects=(1, 2))  # 1 absent here
        assert set(np.unique(labels)) == {0, 2}


def test_corpus_mask_folders(tmp_path):
    """A DAVIS-layout root with every_mask gives each video its annotation folder; the resume
    key changes with any mask file in it."""
    root = tmp_path / "root"
    for sub in ("JPEGImages/480p/v", "Annotations/480p/v"):
        (root / sub).mkdir(parents=True)
    ann = root / "Annotations/480p/v"
    save_palette_png(np.ones((4, 4), np.uint8), ann / "00000.png")
    save_palette_png(np.full((4, 4), 2, np.uint8), ann / "00005.png")
    (video,) = list_videos(root, every_mask=True)
    assert video.mask == ann.absolute()
    assert list_videos(root)[0].mask == (ann / "00000.png").absolute()
    key = video_key({}, {}, video)["mask_sha256"]
    save_palette_png(np.full((4, 4), 3, np.uint8), ann / "00005.png")
    assert video_key({}, {}, Video("v", video.input, video.mask))["mask_sha256"] != key


class _Video(FrameSource):
    """A video's frame numbering without decoding anything: what read_given_masks needs."""

    def __init__(self, length: int):
        self.description, self.length, self.fps, self.live = "video v.mp4", length, None, False


def test_a_videos_masks_are_named_by_frame_number_and_each_frame_once(tmp_path):
    one = np.ones((4, 6), np.uint8)
    write_masks(tmp_path / "ok", {"00003": one, "7": one * 2})
    given = read_given_masks(tmp_path / "ok", _Video(10))
    assert sorted(given) == [3, 7] and given[7].decided == (2,)
    write_masks(tmp_path / "dup", {"10": one, "00010": one})
    with pytest.raises(MaskError, match="both for frame 10"):
        read_given_masks(tmp_path / "dup", _Video(20))
    with pytest.raises(MaskError, match="not named after a frame number"):
        read_given_masks(tmp_path / "ok", _Video(5))  # frame 7 is past the end
    # named by the folder, not by run.py's option: the batch runner reads annotation folders
    (tmp_path / "none").mkdir()
    with pytest.raises(MaskError, match=r"^masks folder \S+none holds no .png mask$"):
        read_given_masks(tmp_path / "none", _Video(5))
    with pytest.raises(MaskError, match=r"^\S+missing is not a folder of <frame>.png masks$"):
        read_given_masks(tmp_path / "missing", _Video(5))


def test_masks_past_max_frames_are_said_or_refused(shipped, clip, tmp_path):
    frames, truth = clip
    with Segmenter(shipped, backend="ort-cpu") as seg:
        with pytest.warns(UserWarning, match=r"frames \[6\] are not used"):
            segment_video(seg, frames, None, tmp_path / "a", masks={0: truth[0], LATE: truth[LATE]},
                          max_frames=4)
        with pytest.raises(MaskError, match="every mask is on a frame"):
            segment_video(seg, frames, None, tmp_path / "b", masks={LATE: truth[LATE]},
                          max_frames=4)
        # only --mask's first-frame mask is resized to its frame; a given one must fit
        half = truth[0][::2, ::2]
        with pytest.raises(MaskError, match="must have its frame's size"):
            segment_video(seg, frames, None, tmp_path / "c", masks={0: half})
        with pytest.warns(UserWarning):
            segment_video(seg, frames, half, tmp_path / "d", max_frames=2)


def test_no_mask_at_all_is_a_usage_error(shipped, clip, tmp_path):
    r = rs.run_cli("--engine-dir", shipped, "--input", clip[0], "--output", tmp_path / "out")
    assert r.returncode == 2 and "--mask FILE" in r.stderr.splitlines()[-1]


def test_a_root_whose_first_annotation_is_on_a_later_frame_gives_it_as_a_given_mask(tmp_path):
    root = tmp_path / "root"
    for sub in ("JPEGImages/480p/v", "Annotations/480p/v"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (6, 4)).save(root / f"JPEGImages/480p/v/{i:05d}.jpg")
    save_palette_png(np.ones((4, 6), np.uint8), root / "Annotations/480p/v/00002.png")
    assert list_videos(root)[0].mask == (root / "Annotations/480p/v").absolute()


def test_propagation_starts_at_a_given_frame_and_stops_during_the_replay(shipped, clip):
    import threading

    from runtime.core.errors import InputError
    from runtime.job import propagate

    frames, truth = clip
    given = {0: truth[0], LATE: truth[LATE]}
    with Segmenter(shipped, backend="ort-cpu") as seg:
        with pytest.raises(InputError, match="frame 8 has none"):
            list(propagate(seg, frames, given, start=8))
        full = {p.index: p.labels for p in propagate(seg, frames, given)}
        again = list(propagate(seg, frames, given, start=LATE))
        assert [p.index for p in again] == list(range(LATE, FRAMES))
        assert np.array_equal(again[0].labels, full[LATE])  # the given frame, as given
        stop = threading.Event()
        stop.set()  # set before the replay: nothing runs, nothing is yielded
        assert list(propagate(seg, frames, given, start=LATE, stop=stop)) == []
        # objects decided absent on the first given frame: it changes nothing; none anywhere:
        # one line, not a run of empty frames
        empty = GivenMask(np.zeros_like(truth[0]), (1,))
        absent = {p.index: p.labels for p in propagate(seg, frames, {0: empty, LATE: truth[LATE]})}
        assert not any(absent[i].any() for i in range(LATE))
        assert np.array_equal(absent[LATE], truth[LATE])  # where it starts, as given
        assert all(absent[i].any() for i in range(LATE, FRAMES))
        with pytest.raises(MaskError, match="no given mask marks an object"):
            list(propagate(seg, frames, {0: empty}))
