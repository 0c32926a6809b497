"""runtime/job.py: one Segmenter over many videos, the pipelined writer, the output-folder rule.

The demo clips (conftest.demo_root), the tests' small exported graphs.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs
from conftest import ONE, TWO
from PIL import Image

from runtime.core.config import RuntimeConfig
from runtime.core.errors import InputError, OutputError
from runtime.core.geometry import PAD_RGB, Placement
from runtime.job import JobInterrupted, check_outputs, frame_png, segment_video
from runtime.media.masks import read_mask
from runtime.media.outputs import StagedFile, StagedFolder
from runtime.segmenter import Segmenter


def demo_clip(name: str, n: int, dest: Path) -> tuple[Path, Path]:
    """The first n frames of a demo clip copied to `dest`, and its first mask."""
    dest.mkdir(parents=True, exist_ok=True)
    layout = rs.demo_layout()
    for p in sorted(layout.frames_dir(name).glob("*.jpg"))[:n]:
        shutil.copy(p, dest / p.name)
    return dest, layout.annotation(name, "00000")


@pytest.fixture(scope="module")
def engine(request) -> Path:
    return rs.cached_engine(request)[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("clips")
    return {name: demo_clip(name, 5, d / name) for name in (ONE, TWO)}


def pngs(out: Path) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted(out.glob("*.png"))]


def test_one_segmenter_many_videos_equals_fresh_ones(engine, clips, tmp_path):
    """start() resets every per-video state: a reused segmenter gives what fresh ones give."""
    with Segmenter(engine, backend="ort-cpu") as seg:
        a1 = segment_video(seg, *clips[ONE], tmp_path / "a1")
        b = segment_video(seg, *clips[TWO], tmp_path / "b")
        segment_video(seg, *clips[ONE], tmp_path / "a2")
    with Segmenter(engine, backend="ort-cpu") as fresh:
        segment_video(fresh, *clips[TWO], tmp_path / "b_fresh")
    assert b["objects"] == [1, 2] and a1["objects"] == [1]
    for x, y in ((tmp_path / "a1", tmp_path / "a2"), (tmp_path / "b", tmp_path / "b_fresh")):
        px, py = pngs(x), pngs(y)
        assert len(px) == len(py) == 5
        assert all(rs.iou(u, v) > 0.99 for u, v in zip(px, py))
    assert ([f["decision"] for f in rs.run_frames(tmp_path / "a1")]
            == [f["decision"] for f in rs.run_frames(tmp_path / "a2")])
    s = a1["summary"]
    assert s["frames"] == 5 and s["fps"] > 0 and s["wall_fps"] > 0 and not a1["interrupted"]
    assert json.loads((tmp_path / "a1" / "run.json").read_text())["summary"] == s
    assert not list(tmp_path.glob(".*partial*"))


def test_run_json_lists_every_frame_but_no_run_holds_them_all(engine, tmp_path, monkeypatch):
    """A run kept every frame's record until its end, so its memory grew with the video; the
    writer now logs each to disk with its frame, and run.json is streamed from there."""
    from runtime import job
    from runtime.segmenter import FrameRecord

    n = 40
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(n):
        rgb = np.full((64, 112, 3), 90, np.uint8)
        rgb[16:48, 10 + i:60 + i] = (200, 60, 60)
        Image.fromarray(rgb).save(frames / f"{i:05d}.png")
    mask = np.zeros((64, 112), np.uint8)
    mask[16:48, 10:60] = 1

    def records() -> int:
        return sum(type(o) is FrameRecord for o in gc.get_objects())

    gc.collect()
    before = records()  # other tests' records that are still referenced
    alive: list[int] = []  # FrameRecords in memory after each frame went to the writer
    propagate = job.propagate

    def counted(*args, **kwargs):
        for out in propagate(*args, **kwargs):
            yield out
            alive.append(records() - before)

    monkeypatch.setattr(job, "propagate", counted)
    out = tmp_path / "out"
    with Segmenter(engine, backend="ort-cpu") as seg:
        log = segment_video(seg, frames, mask, out)
    assert len(alive) == n and max(alive) <= 2 * job.QUEUE_FRAMES + 2, alive
    assert "frames" not in log and log["summary"]["frames"] == n
    records = rs.run_frames(out)
    assert [f["frame"] for f in records] == list(range(n))
    assert [f["kind"] for f in records] == ["first"] + ["propagated"] * (n - 1)
    assert sorted(p.name for p in out.iterdir()) == [*(f"{i:05d}.png" for i in range(n)),
                                                     "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]


def test_rerun_replaces_only_what_the_tool_wrote(engine, clips, tmp_path):
    out = tmp_path / "out"
    with Segmenter(engine, backend="ort-cpu") as seg:
        segment_video(seg, *clips[ONE], out)
        (out / "notes.txt").write_text("mine")
        (out / "mine").mkdir()
        log = segment_video(seg, *clips[ONE], out, max_frames=2)
    assert log["summary"]["frames"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.png", "00001.png", "mine", "notes.txt", "run.json"]
    assert (out / "notes.txt").read_text() == "mine"


def test_overlay_inside_the_output_folder(engine, clips, tmp_path):
    """The overlay may live in the output folder; both are ordinary files (umask, not 0600)."""
    out = tmp_path / "new" / "out"
    umask = os.umask(0o022)
    try:
        with Segmenter(engine, backend="ort-cpu") as seg:
            for _ in range(2):
                segment_video(seg, *clips[ONE], out, overlay=out / "overlay.mp4",
                              max_frames=3)
    finally:
        os.umask(umask)
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.png", "00001.png", "00002.png", "overlay.mp4", "run.json"]
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir()} == {0o644}
    assert (out.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("phase", ["writer", "commit"])
def test_a_signal_after_the_last_frame_keeps_the_whole_run(engine, clips, tmp_path, monkeypatch,
                                                            phase):
    """Ctrl-C/SIGTERM while the last frames are written, or while the outputs move in: held
    until that is done, then the run ends as interrupted with every frame kept (it threw the
    whole run away: the held signal came out of the block as an error)."""
    from runtime import job

    owner, name = (job._Writer, "finish") if phase == "writer" else (StagedFolder, "commit")
    original = getattr(owner, name)

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # held by the block this runs in
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)
    out = tmp_path / "out"
    with Segmenter(engine, backend="ort-cpu") as seg:
        try:
            segment_video(seg, *clips[ONE], out)
        except JobInterrupted as e:
            log = e.log
        except KeyboardInterrupt:  # the job's own is JobInterrupted
            pytest.fail("the held signal came out of the job as it was: the run was dropped")
        else:
            pytest.fail("the signal was lost")
    assert log["summary"]["frames"] == 5
    assert sorted(p.name for p in out.iterdir()) == [*(frame_png(i) for i in range(5)),
                                                     "run.json"]
    assert [f["frame"] for f in rs.run_frames(out)] == list(range(5))
    assert not list(tmp_path.glob(".*"))


def test_an_error_with_a_signal_held_is_the_error_and_leaves_nothing(engine, clips, tmp_path,
                                                                     monkeypatch):
    """A failing commit while a Ctrl-C is held: the failure is reported and nothing is left
    (it was reported as an interrupted run with frames kept that were not there, the staging
    folder and the lock left behind)."""
    def failing(self):
        os.kill(os.getpid(), signal.SIGINT)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StagedFolder, "commit", failing)
    with Segmenter(engine, backend="ort-cpu") as seg:
        try:
            segment_video(seg, *clips[ONE], tmp_path / "out")
        except OutputError as e:
            assert "No space left" in str(e)
        except KeyboardInterrupt:
            pytest.fail("the failure was reported as an interrupt")
        else:
            pytest.fail("the failure was lost")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_users_file_of_an_output_name_is_refused_before_any_work(clips, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "00000.png")
    with pytest.raises(OutputError, match=r"00000.png that no earlier run of this tool wrote"):
        check_outputs(out)
    (out / "00000.png").unlink()
    for text in ("my own notes", "{}", "[]", '{"frames": {"a": 1}, "summary": {"frames": 1}}',
                 *(f'{{"frames": [], "summary": {{"frames": {n}}}}}'
                   for n in ("Infinity", "1e9", "-3", "true", "NaN")),
                 '{"frames": [{"frame": 1.5}], "summary": {"frames": 2}}'):
        (out / "run.json").write_text(text)
        with pytest.raises(OutputError, match="not a run log"):
            check_outputs(out)
        assert (out / "run.json").read_text() == text
    (out / "run.json").write_text('{"frames": [{"frame": 0}, {"frame": 1}], '
                                  '"summary": {"frames": 2}}')
    check_outputs(out)  # ours: it wrote 00000.png and 00001.png
    for name in ("000001.png", "0000000.png"):  # another numbering (ffmpeg's %06d)
        (out / name).write_bytes(b"user")
        with pytest.raises(OutputError, match=f"{name} that no earlier run"):
            check_outputs(out)
        (out / name).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_outputs_are_refused_without_traces(tmp_path):
    with pytest.raises(OutputError, match="x.mp4"):
        check_outputs(tmp_path / "out", overlay=Path("/proc/x.mp4"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="not a folder"):
        check_outputs(tmp_path / "file")
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs(tmp_path / "out", overlay=tmp_path)
    check_outputs(tmp_path / "new" / "deeper" / "out", overlay=tmp_path / "v" / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failing_job_keeps_another_jobs_staging_in_a_folder_it_created(tmp_path):
    """Two jobs (e.g. two corpus workers) stage outputs under a parent folder the first one
    created; the first fails: the second's staging survives and commits. A failing job alone
    still leaves no trace of the folders it created."""
    parent = tmp_path / "new" / "deeper"
    first = StagedFolder(parent / "a", index="run.json")  # creates new/ and new/deeper/
    second = StagedFolder(parent / "b", index="run.json")
    overlay = StagedFile(parent / "c.mp4")
    (second.path / "00000.png").write_bytes(b"mask")
    first.abort()
    assert (second.path / "00000.png").read_bytes() == b"mask" and overlay.path.is_file()
    second.commit()
    overlay.commit()
    assert sorted(p.name for p in parent.iterdir()) == ["b", "c.mp4"]
    assert (parent / "b" / "00000.png").read_bytes() == b"mask"

    lone = StagedFile(tmp_path / "x" / "y" / "o.mp4")
    lone.abort()
    lone_folder = StagedFolder(tmp_path / "x" / "y" / "out", index="run.json")
    lone_folder.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_bad_max_frames_and_empty_outputs(engine, clips, tmp_path):
    with Segmenter(engine, backend="ort-cpu") as seg, pytest.raises(InputError, match=">= 1"):
        segment_video(seg, *clips[ONE], tmp_path / "o", max_frames=0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------- frames of another shape
def test_placement_letterbox_round_trip():
    """A 9:16 frame on 16:9 graphs: centred, padded with the mean colour, masks come back."""
    place = Placement.of((480, 270), (128, 224), "letterbox")
    assert (place.top, place.left, place.inner_h, place.inner_w) == (0, 76, 128, 72)
    rgb = np.zeros((480, 270, 3), np.uint8)
    image = place.image(rgb)
    assert image.shape == (128, 224, 3)
    assert (image[:, :76] == PAD_RGB).all() and (image[:, 76:148] == 0).all()
    labels = np.zeros((480, 270), np.uint8)
    labels[100:300, 50:200], labels[350:450, 20:120] = 1, 2
    masks = place.masks(labels, (1, 2), 3)
    assert masks.shape == (3, 128, 224) and not masks[:, :, :76].any() and not masks[2].any()
    prob = np.concatenate([1 - masks[:2].sum(0, keepdims=True), masks[:2]])
    back = place.labels(prob, (1, 2), 480, 270)
    assert rs.iou(back, labels) > 0.95
    assert not Placement.of((480, 854), (128, 224), "letterbox").padded  # 1.6 %: resized
    stretch = Placement.of((480, 270), (128, 224), "stretch")
    assert not stretch.padded and stretch.distorts((480, 270))


def crop_9x16(src: Path, mask: Path, dest: Path) -> tuple[Path, Path]:
    """A 270x480 (9:16) window of 854x480 frames and of their first mask, on the object."""
    dest.mkdir()
    left = int(np.clip(np.nonzero(read_mask(mask))[1].mean() - 135, 0, 854 - 270))
    box = (left, 0, left + 270, 480)
    for p in sorted(src.glob("*.jpg")):
        Image.open(p).crop(box).save(dest / p.name, quality=95)
    Image.open(mask).crop(box).save(dest.parent / "mask916.png")
    return dest, dest.parent / "mask916.png"


@pytest.mark.parametrize("fit, says", [
    (None, r"letterboxed into 72x128 of the input \(fit=letterbox\)"),
    ("stretch", r"stretched \(fit=stretch\)")])
def test_another_aspect_ratio_is_said_and_masks_keep_the_frame_size(engine, clips, tmp_path,
                                                                     fit, says):
    """Before, a 9:16 video on 16:9 graphs was squeezed without a word."""
    frames, mask = crop_9x16(*clips[ONE], tmp_path / "frames")
    with Segmenter(engine, "ort-cpu", RuntimeConfig(fit=fit)) as seg, \
            pytest.warns(UserWarning, match=says + r".*`--size 224 128` would fit"):
        log = segment_video(seg, frames, mask, tmp_path / "out")
    assert log["config"]["fit"] == (fit or "letterbox")
    out = pngs(tmp_path / "out")
    assert [o.shape for o in out] == [(480, 270)] * 5
    assert np.array_equal(out[0], read_mask(mask))  # frame 0 is the given mask
    assert all(o.any() for o in out)


def test_frames_changing_size_or_colour_mode(engine, clips, tmp_path):
    """Same aspect ratio: resized to the first frame's size with a warning; grayscale among RGB:
    converted with a warning; another aspect ratio: refused naming the frame."""
    src, mask = clips[ONE]
    d = tmp_path / "mixed"
    shutil.copytree(src, d)
    Image.open(d / "00002.jpg").resize((427, 240)).save(d / "00002.jpg")
    Image.open(d / "00003.jpg").convert("L").save(d / "00003.jpg")
    with Segmenter(engine, "ort-cpu") as seg:
        with pytest.warns(UserWarning) as record:
            segment_video(seg, d, mask, tmp_path / "out")
        said = " | ".join(str(w.message) for w in record)
        assert "frame 00002.jpg is 427x240, the first frame 854x480: resizing it" in said
        assert "frame 00003.jpg has colour mode L, the first frame RGB: converted" in said
        assert [o.shape for o in pngs(tmp_path / "out")] == [(480, 854)] * 5
        Image.open(d / "00004.jpg").resize((320, 240)).save(d / "00004.jpg")
        with pytest.raises(InputError, match=r"frame 00004.jpg is 320x240 but the first frame "
                                             r"is 854x480 \(another aspect ratio\)"), \
                pytest.warns(UserWarning):  # 00002 and 00003 again, as above
            segment_video(seg, d, mask, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
