"""Faults a user meets in real use, each in a real process where the defect needs one: errors on
the first frame, two runs into one output, unbounded threads, dangling links, overlay names, a
full disk, truncated videos and a cluster address that is not Ray. Clips are generated here."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import runtime_support as rs
from conftest import interrupt, interruptible, script_env, signal_when_written, wait_for_file
from PIL import Image

from runtime import job
from runtime import run as cli
from runtime.core.config import default_threads
from runtime.core.errors import MaskError, OutputError, RuntimeConfigError
from runtime.core.manifest import Manifest
from runtime.job import check_overlay_owned, segment_video, written_path
from runtime.media.outputs import OutputLock, StagedFolder, check_writable_dir
from runtime.media.palette import OverlayWriter, save_palette_png
from runtime.media.sources import FrameSource, open_source
from runtime.segmenter import Segmenter


def frames(n: int, h: int, w: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """n RGB frames of a textured background with a disk moving across, and frame 0's mask."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (9, 9), 3)
    yy, xx = np.mgrid[:h, :w]
    out, mask = [], None
    for t in range(n):
        cx, cy, r = w * (0.3 + 0.4 * t / max(n - 1, 1)), h / 2, min(h, w) / 5
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        frame = background.copy()
        frame[disk] = (230, 60, 40)
        out.append(frame)
        if t == 0:
            mask = disk.astype(np.uint8)
    assert mask is not None
    return out, mask


def write_video(path: Path, rgb: list[np.ndarray], fourcc: str = "mp4v") -> Path:
    h, w = rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 24.0, (w, h))
    assert writer.isOpened()
    for f in rgb:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_folder(folder: Path, rgb: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(rgb):
        Image.fromarray(f).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def write_mask(path: Path, labels: np.ndarray) -> Path:
    save_palette_png(labels, path)
    return path


@pytest.fixture(scope="module")
def engine(request) -> Path:
    return rs.cached_engine(request)[1]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An 854x480 clip of 120 frames as an mp4 and as a frame folder, and its first mask."""
    d = tmp_path_factory.mktemp("video")
    rgb, mask = frames(120, 480, 854)
    return (write_video(d / "clip.mp4", rgb), write_folder(d / "frames", rgb),
            write_mask(d / "mask.png", mask))


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "runtime/run.py", *map(str, args)], cwd=rs.REPO,
                          env=script_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ------------------------------------------------------------- errors on the first frame
@pytest.mark.parametrize("fault", ["aspect", "objects"])
def test_first_frame_error_exits_with_one_line_and_no_abort(engine, video, tmp_path, fault):
    """Before, the error line was followed by `terminate called without an active exception`
    and exit 134 in most runs: the frame reader was still decoding when Python exited."""
    mp4, folder, _ = video
    if fault == "aspect":
        mask, expect = np.zeros((500, 500), np.uint8), "another aspect ratio"
        mask[100:300, 100:300] = 1
    else:  # three objects on graphs exported for two
        mask, expect = np.zeros((480, 854), np.uint8), "3 objects in the given masks, but"
        for i in range(3):
            mask[100:200, 100 + 200 * i:250 + 200 * i] = i + 1
    bad = write_mask(tmp_path / "bad.png", mask)
    for i, source in enumerate([mp4, folder, mp4, folder]):
        r = run_cli("--engine-dir", engine, "--input", source, "--mask", bad, "--output",
                    tmp_path / f"out{i}", "--backend", "ort-cpu", "--quiet")
        assert r.returncode == 1, r.stderr
        assert expect in one_error_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]


class TrackedSource(FrameSource):
    """A video whose decoder says when it was let go (the capture released)."""

    def __init__(self, path: Path):
        self.inner = open_source(path)
        super().__init__(self.inner.description, self.inner.length, self.inner.fps, False)
        self.closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            yield from self.inner
        finally:
            self.closed = True


def test_reader_is_done_decoding_when_a_failed_run_returns(engine, video, tmp_path):
    mp4, _, _ = video
    bad = write_mask(tmp_path / "bad.png", np.ones((500, 500), np.uint8))
    source = TrackedSource(mp4)
    with Segmenter(engine, backend="ort-cpu") as seg:
        with pytest.raises(MaskError, match="another aspect ratio"):
            segment_video(seg, source, bad, tmp_path / "out")
        assert source.closed
        assert [t for t in threading.enumerate() if t.name == "qdmn-reader"] == []


# ---------------------------------------------------------------- one run per output
def test_second_run_into_the_same_output_is_refused(engine, video, tmp_path):
    """Before, both runs exited 0 and OUT held one video's run.json and the other's masks."""
    _, folder, mask = video
    out = tmp_path / "out"
    first = subprocess.Popen(
        interruptible("runtime/run.py", "--engine-dir", str(engine), "--input", str(folder),
                      "--mask", str(mask), "--output", str(out), "--backend", "ort-cpu",
                      "--threads", "1", "--quiet"),
        cwd=rs.REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(first, tmp_path, ".out.partial-*/00002.png")
        other, other_mask = tmp_path / "other", np.zeros((240, 427), np.uint8)
        other_mask[50:150, 50:200] = 1
        rgb, _ = frames(5, 240, 427, seed=1)
        r = run_cli("--engine-dir", engine, "--input", write_folder(other, rgb), "--mask",
                    write_mask(tmp_path / "other.png", other_mask), "--output", out,
                    "--backend", "ort-cpu", "--quiet")
        line = one_error_line(r.stderr)
        assert r.returncode == 1
        assert "in use by another run" in line and f"pid {first.pid}" in line, line
        code, err = interrupt(first, signal.SIGINT)
    finally:
        first.kill()
    assert code == 130, err
    log = json.loads((out / "run.json").read_text())
    assert str(folder) in log["input"]
    assert len(list(out.glob("*.png"))) == len(log["frames"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "other.png", "out"]


def test_output_lock_refuses_a_second_holder_and_takes_over_a_stale_file(tmp_path):
    target = tmp_path / "deep" / "out"
    first = StagedFolder(target, index="run.json")
    with pytest.raises(OutputError, match=f"in use by another run \\(pid {os.getpid()}"):
        StagedFolder(target, index="run.json")
    with pytest.raises(OutputError, match="in use by another run"):
        OutputLock(target)
    first.commit()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # lock file gone
    # a lock file left by a killed run is not held: the next run takes it over
    (tmp_path / "deep" / ".out.lock").write_text("pid 1: a run killed with SIGKILL")
    second = StagedFolder(target, index="run.json")
    second.abort()
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


def test_second_corpus_run_into_the_same_output_is_refused(engine, video, tmp_path):
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    _, folder, mask = video
    listing = tmp_path / "videos.csv"
    listing.write_text(f"{folder},{mask},clip\n")
    out = tmp_path / "out"
    held = OutputLock(out)
    try:
        r = subprocess.run([sys.executable, "runtime/batch.py", "--engine-dir", str(engine),
                            "--videos", str(listing), "--output", str(out), "--quiet"],
                           cwd=rs.REPO, env=script_env(), capture_output=True, text=True,
                           timeout=300, check=False)
    finally:
        held.release()
    assert r.returncode == 1 and "in use by another run" in one_error_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos.csv"]


# ------------------------------------------------------------------------- threads
def test_a_video_ffmpeg_cannot_read_is_our_one_line_alone(engine, video, tmp_path):
    """FFmpeg inside OpenCV printed its own "moov atom not found" line beside ours."""
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all")
    r = run_cli("--engine-dir", engine, "--input", bad, "--mask", video[2], "--output",
                tmp_path / "out", "--backend", "ort-cpu")
    assert r.returncode == 1
    assert "not a readable video" in one_error_line(r.stderr), r.stderr  # its only line


def test_a_camera_that_cannot_be_opened_is_our_one_line_alone(engine, video, tmp_path):
    """OpenCV logged a warning per capture backend it tried (V4L2, FFmpeg) before our line.
    Camera 99 exists on no test machine."""
    r = run_cli("--engine-dir", engine, "--input", "99", "--mask", video[2], "--output",
                tmp_path / "out", "--backend", "ort-cpu")
    assert r.returncode == 1
    assert "cannot open 99: not a readable" in one_error_line(r.stderr), r.stderr


def test_a_warning_during_the_progress_bar_is_a_line_of_its_own(engine, tmp_path):
    """The first warning (here: an object too small for the memory read) was glued to the
    progress bar's line: `\\r  0%|     | 0/3 [00:00<?, ?frame/s]warning: object 1 ...`."""
    rgb, mask = frames(3, 120, 200)
    small = np.zeros_like(mask)
    small[40:44, 60:64] = 1  # 16 pixels: far below 4 cells of the graphs' read
    r = run_cli("--engine-dir", engine, "--input", write_folder(tmp_path / "f", rgb), "--mask",
                write_mask(tmp_path / "m.png", small), "--output", tmp_path / "out",
                "--backend", "ort-cpu")
    assert r.returncode == 0, r.stderr
    pieces = [p for line in r.stderr.split("\n") for p in line.split("\r")]
    assert "frame/s" in r.stderr  # the bar was drawn
    noted = [p for p in pieces if "warning:" in p]
    assert noted and all(p.startswith("warning: ") for p in noted), r.stderr


def test_names_that_are_not_utf8(engine, tmp_path):
    """File names are bytes on Linux: a frame folder, mask and output named in Latin-1 run like
    any other (writing the lock once raised UnicodeEncodeError and left the lock file behind);
    OpenCV crashes the process on such a video or overlay path, so those are refused in one
    line, before anything is written."""
    latin = Path(os.fsdecode(os.fsencode(tmp_path) + b"/fr\xe9"))
    rgb, mask = frames(4, 120, 200)
    folder = write_folder(latin / "images", rgb)
    first = write_mask(latin / "mask.png", mask)
    r = run_cli("--engine-dir", engine, "--input", folder, "--mask", first, "--output",
                latin / "out", "--backend", "ort-cpu", "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (latin / "out").glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    movie = write_video(tmp_path / "clip.mp4", rgb).rename(latin / "clip.mp4")
    for args in (("--input", movie, "--output", tmp_path / "a"),
                 ("--input", folder, "--output", tmp_path / "b", "--overlay", latin / "o.mp4")):
        r = run_cli("--engine-dir", engine, "--mask", first, *args, "--backend", "ort-cpu")
        assert r.returncode == 1 and "not valid UTF-8" in one_error_line(r.stderr), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fr\udce9"]  # no output, no lock
    assert sorted(p.name for p in latin.iterdir()) == ["clip.mp4", "images", "mask.png", "out"]


def test_threads_above_the_usable_cores_are_refused(engine, video, tmp_path, capsys):
    _, folder, mask = video
    n = default_threads() + 1
    argv = ["--engine-dir", str(engine), "--input", str(folder), "--mask", str(mask),
            "--output", str(tmp_path / "out"), "--quiet"]
    for backend in ("ort-cpu", "openvino"):
        assert cli.main([*argv, "--backend", backend, "--threads", str(n)]) == 1
        assert f"threads={n}: more than the {n - 1} CPU core(s)" in one_error_line(
            capsys.readouterr().err)
    from runtime.backends.ort import OrtBackend

    with pytest.raises(RuntimeConfigError, match=f"threads={n}"):  # the Python API alike
        OrtBackend(Manifest.load(engine), engine, threads=n)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- output paths
@pytest.mark.parametrize("which", ["output", "overlay"])
def test_dangling_symlink_is_refused_before_the_first_frame(engine, video, tmp_path, capsys,
                                                            which):
    """Before, a dangling --output failed after the whole video (`Not a directory`)."""
    _, folder, mask = video
    link = tmp_path / ("out" if which == "output" else "vis.mp4")
    link.symlink_to(tmp_path / "nowhere" / "x")
    out = link if which == "output" else tmp_path / "out"
    argv = ["--engine-dir", str(engine), "--input", str(folder), "--mask", str(mask),
            "--output", str(out), "--backend", "ort-cpu", "--quiet"]
    if which == "overlay":
        argv += ["--overlay", str(link)]
    assert cli.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{link} is a symbolic link to" in line and "does not exist" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name]
    with pytest.raises(OutputError, match="symbolic link"):
        check_writable_dir(link)


@pytest.mark.parametrize("name, expect", [
    ("x.png", "x.png: .png is not a video file type"),
    ("notes.txt", "notes.txt: .txt is not a video file type"),
    ("noext", "noext: no extension is not a video file type"),
    ("out/00001.png", "is inside the output folder"),
    ("out/vis.mp4", "is inside the output folder"),
])
def test_overlay_names_that_are_not_videos_are_refused(engine, video, tmp_path, capsys, name,
                                                       expect):
    """Before, x.png wrote a still image and exit 0, out/00001.png replaced a mask."""
    _, folder, mask = video
    assert cli.main(["--engine-dir", str(engine), "--input", str(folder), "--mask", str(mask),
                     "--output", str(tmp_path / "out"), "--overlay", str(tmp_path / name),
                     "--backend", "ort-cpu", "--quiet"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert expect in line and ".partial" not in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".avi", ".mkv"])
def test_overlay_in_every_supported_container(engine, video, tmp_path, suffix):
    _, folder, mask = video
    vis = tmp_path / f"vis{suffix}"
    assert cli.main(["--engine-dir", str(engine), "--input", str(folder), "--mask", str(mask),
                     "--output", str(tmp_path / "out"), "--overlay", str(vis),
                     "--backend", "ort-cpu", "--max-frames", "6", "--quiet"]) == 0
    cap = cv2.VideoCapture(str(vis))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 6


def test_an_overlay_replaces_only_a_file_an_earlier_run_wrote(engine, video, tmp_path):
    """`--overlay` over a file of the user's is refused before the run, like OUT's own files
    (before, it was replaced without a word); the overlay of an earlier run into the same OUT
    is replaced, so the same command runs again."""
    _, folder, mask = video
    mine = tmp_path / "mine.mp4"
    mine.write_bytes(b"the user's own video")
    args = ["--engine-dir", engine, "--input", folder, "--mask", mask, "--backend", "ort-cpu",
            "--max-frames", "3", "--quiet"]
    r = run_cli(*args, "--output", tmp_path / "out", "--overlay", mine)
    assert r.returncode == 1
    assert "exists and no earlier run into" in one_error_line(r.stderr), r.stderr
    assert mine.read_bytes() == b"the user's own video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.mp4"]
    vis = tmp_path / "vis.mp4"
    for _ in range(2):
        r = run_cli(*args, "--output", tmp_path / "out", "--overlay", vis)
        assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["overlay"] == str(vis.resolve())
    assert run_cli(*args, "--output", tmp_path / "out").returncode == 0  # no overlay this time:
    assert run_cli(*args, "--output", tmp_path / "out", "--overlay", vis).returncode == 0  # still OUT's
    r = run_cli(*args, "--output", tmp_path / "other", "--overlay", vis)  # not that run's OUT
    assert r.returncode == 1 and "no earlier run into" in one_error_line(r.stderr)
    vis.unlink()
    vis.symlink_to(mine)  # a link at the overlay path is replaced, never followed
    assert run_cli(*args, "--output", tmp_path / "out", "--overlay", vis).returncode == 0
    assert not vis.is_symlink() and mine.read_bytes() == b"the user's own video"


def test_which_existing_overlay_a_run_may_replace(tmp_path):
    """check_overlay_owned: the overlay OUT's run.json names; one inside OUT (the corpus
    runner's layout) when OUT holds a run log; any, for a run log from before runs named their
    overlay (the demo's and corpus outputs of earlier versions run again); nothing else."""
    def owned(out: Path, overlay: Path) -> None:
        check_overlay_owned(out, overlay, job._earlier_log(out))

    out, mine = tmp_path / "out", tmp_path / "mine.mp4"
    out.mkdir()
    mine.write_bytes(b"mine")
    owned(out, tmp_path / "new.mp4")  # nothing there to lose
    log = {"frames": [], "summary": {"frames": 0}}
    for content in (None, {**log, "overlay": None}, {**log, "overlay": str(out / "x.mp4")}):
        if content is not None:
            (out / "run.json").write_text(json.dumps(content))
        with pytest.raises(OutputError, match="no earlier run into"):
            owned(out, mine)
    (out / "overlay.mp4").write_bytes(b"an earlier corpus run's")
    owned(out, out / "overlay.mp4")
    (out / "run.json").write_text(json.dumps({**log, "overlay": written_path(mine)}))
    owned(out, mine)
    (out / "run.json").write_text(json.dumps(log))  # written before the field existed
    owned(out, mine)
    (out / "run.json").write_text("{}")
    with pytest.raises(OutputError, match="not a run log"):
        owned(out, mine)


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_an_overlay_of_a_source_with_a_clock_rate_for_its_fps(tmp_path, suffix):
    """Some streams report their 90 kHz clock as the frame rate. Before, the mp4 writer would
    not open and the mkv one's frame count came back negative, read as frames lost: the run
    failed either way. A rate no camera has is treated as unknown (24 fps, as for no rate)."""
    rgb, mask = frames(5, 48, 64)
    writer = OverlayWriter(tmp_path / f"vis{suffix}", fps=90000.0)
    for f in rgb:
        writer.write(f, mask)
    writer.close()
    cap = cv2.VideoCapture(str(tmp_path / f"vis{suffix}"))
    fps, n = cap.get(cv2.CAP_PROP_FPS), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5 and fps == pytest.approx(24.0, abs=0.5)


# ---------------------------------------------------------------------- full disk
def test_export_on_a_full_disk_is_one_line(request, tmp_path):
    """The exporter's writes fail as on a full disk (a file-size limit of 1 MB: EFBIG, the
    same OSError path as ENOSPC). Before: a 17-line traceback."""
    ckpt = rs.cached_engine(request)[0]

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([sys.executable, "export/to_onnx.py", str(ckpt), "--out",
                        str(tmp_path / "graphs"), "--size", "64", "128"], cwd=rs.REPO,
                       env=script_env(), capture_output=True, text=True, timeout=300,
                       check=False, preexec_fn=limit_file_size)
    assert r.returncode == 1
    assert "File too large" in one_error_line(r.stderr)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- truncated video
def test_truncated_video_is_reported(engine, tmp_path, capsys):
    """Before, an avi whose header says 50 frames but holds half of them gave 25 frames, exit 0,
    no word."""
    rgb, mask = frames(50, 240, 432)
    whole = write_video(tmp_path / "whole.avi", rgb, "MJPG")
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    argv = ["--engine-dir", str(engine), "--mask", str(write_mask(tmp_path / "m.png", mask)),
            "--backend", "ort-cpu", "--quiet"]
    assert cli.main([*argv, "--input", str(cut), "--output", str(tmp_path / "cut")]) == 0
    log = json.loads((tmp_path / "cut" / "run.json").read_text())
    decoded = log["input_frames"]["decoded"]
    assert log["input_frames"]["declared"] == 50 and 0 < decoded < 50
    assert len(log["frames"]) == decoded
    err = capsys.readouterr().err
    assert f"declares 50 frames but only {decoded} could be decoded" in err, err
    assert cli.main([*argv, "--input", str(whole), "--output", str(tmp_path / "whole")]) == 0
    log = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert log["input_frames"] == {"declared": 50, "decoded": 50}
    assert "declares" not in capsys.readouterr().err


# --------------------------------------------------------------- a cluster that is not Ray
def test_batch_address_that_is_not_ray_times_out_with_one_line(engine, video, tmp_path):
    """A port that accepts TCP but is not Ray. Before: the corpus runner hung (killed after
    150 s)."""
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    _, folder, mask = video
    listing = tmp_path / "videos.csv"
    listing.write_text(f"{folder},{mask},clip\n")
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    port = server.getsockname()[1]
    start = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "runtime/batch.py", "--engine-dir", str(engine),
                            "--videos", str(listing), "--output", str(tmp_path / "out"),
                            "--address", f"127.0.0.1:{port}", "--quiet"],
                           cwd=rs.REPO, env=script_env(), capture_output=True, text=True,
                           timeout=120, check=False)
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        server.close()
    assert time.monotonic() - start < 60
    assert r.returncode == 1
    assert "does not answer as Ray" in one_error_line(r.stderr)
    assert accepted, "the probe never connected"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos.csv"]


# ------------------------------------------------------- one writer elsewhere too
def test_training_and_evaluation_refuse_an_output_in_use(tmp_path, capsys):
    """Two training runs in one out_dir would overwrite each other's checkpoints; two
    evaluations into one folder would mix their CSVs."""
    from benchmarks import evaluate
    from training import train

    held = OutputLock(tmp_path / "run")
    try:
        assert train.main(["--config", str(rs.REPO / "configs/light.yaml"), "--out-dir",
                           str(tmp_path / "run")]) == 1
        assert "in use by another run" in one_error_line(capsys.readouterr().err)
        assert evaluate.main(["--engine-dir", str(tmp_path / "e"), "--data", str(tmp_path),
                              "--out", str(tmp_path / "run"), "--no-progress"]) == 1
        assert "in use by another run" in one_error_line(capsys.readouterr().err)
    finally:
        held.release()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ a camera that runs for ever
def test_live_run_log_is_bounded_and_counts_every_frame(engine, tmp_path, monkeypatch):
    """A camera's run.json listed every frame, so memory grew for as long as it ran."""
    from runtime import job

    rgb, mask = frames(12, 240, 432)

    class Camera(FrameSource):
        def __init__(self) -> None:
            super().__init__("fake camera", None, None, True)

        def __iter__(self) -> Iterator[np.ndarray]:
            yield from rgb

    monkeypatch.setattr(job, "LIVE_LOG_FRAMES", 4)
    monkeypatch.setattr(cli, "open_source", lambda src: Camera())
    out = tmp_path / "out"
    argv = ["--engine-dir", str(engine), "--input", "0", "--mask",
            str(write_mask(tmp_path / "m.png", mask)), "--output", str(out),
            "--backend", "ort-cpu", "--mem-every", "1", "--quality-threshold", "0", "--quiet"]
    assert cli.main(argv) == 0
    log = json.loads((out / "run.json").read_text())
    assert [f["frame"] for f in log["frames"]] == [8, 9, 10, 11]
    assert log["summary"]["frames"] == 12 and log["summary"]["insertions"] == 11
    assert log["input_frames"] == {"declared": None, "decoded": 12}
    assert len(list(out.glob("*.png"))) == 12
    assert cli.main(argv) == 0  # a rerun owns all 12 PNGs, not only the 4 listed


def test_run_totals_count_what_the_summary_says():
    """The running totals (what a run keeps instead of its records) behind run.json's summary."""
    from runtime.segmenter import FrameRecord, RunTotals

    def record(i: int) -> FrameRecord:
        decision = {"accepted": i % 2 == 0, "evicted": 1 if i % 3 == 0 else None}
        return FrameRecord(i, None, None, None, decision if i else None, {},
                           {"encoder": float(i), "total": 2.0 * i + 1})

    records = [record(i) for i in range(6)]
    totals = RunTotals()
    for r in records:
        totals.add(r)
    s = totals.summary()
    assert s["frames"] == 6 and s["insertions"] == 2 and s["evictions"] == 1
    assert s["mean_ms"]["encoder"] == 2.5 and s["mean_ms"]["total"] == 6.0


# ------------------------------------------- what a tester found next (same classes)
def run_limited(max_bytes: int, *args: str | Path) -> subprocess.CompletedProcess:
    """run.py with every file it writes capped at `max_bytes` (EFBIG, as a full disk fails)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "runtime/run.py", *map(str, args)], cwd=rs.REPO,
                          env=script_env(), capture_output=True, text=True, timeout=300,
                          check=False, preexec_fn=limit)


def test_an_overlay_that_cannot_be_written_fails_the_run(engine, video, tmp_path):
    """OpenCV's writer drops frames it cannot write without a word: before, exit 0 and an
    overlay holding 3 of 30 frames."""
    _, folder, mask = video
    r = run_limited(200_000, "--engine-dir", engine, "--input", folder, "--mask", mask,
                    "--output", tmp_path / "out", "--overlay", tmp_path / "vis.mkv",
                    "--backend", "ort-cpu", "--max-frames", "30", "--quiet")
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert f"cannot write {tmp_path / 'vis.mkv'}: only" in line and "of its 30 frames" in line
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_names_the_users_path(engine, video, tmp_path):
    _, folder, mask = video
    r = run_limited(1_000, "--engine-dir", engine, "--input", folder, "--mask", mask,
                    "--output", tmp_path / "out", "--backend", "ort-cpu", "--quiet")
    assert r.returncode == 1
    assert f"cannot write {tmp_path / 'out' / '00000.png'}: File too large" in one_error_line(
        r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_are_inputs_are_refused(engine, video, tmp_path, capsys):
    """Before: an overlay written over the input video replaced it; masks written into the
    frames folder were read back as frames by the next run."""
    mp4, folder, mask = video
    base = ["--engine-dir", str(engine), "--mask", str(mask), "--backend", "ort-cpu", "--quiet"]
    size = mp4.stat().st_size
    for argv, expect in (
            (["--input", str(mp4), "--output", str(tmp_path / "o"), "--overlay", str(mp4)],
             f"overlay {mp4} is the --input"),
            (["--input", str(folder), "--output", str(folder)], f"output {folder} is the --input"),
            (["--input", str(folder), "--output", str(engine)],
             f"output {engine} is the --engine-dir")):
        assert cli.main([*base, *argv]) == 1
        assert expect in one_error_line(capsys.readouterr().err)
    assert mp4.stat().st_size == size and not (tmp_path / "o").exists()
    seg = Segmenter(engine, backend="ort-cpu")
    with seg, pytest.raises(OutputError, match="is the input"):
        segment_video(seg, folder, mask, folder)


def hold_lock(target: Path, nested: bool) -> subprocess.Popen:
    """Another process holding OutputLock(target) until its stdin closes."""
    code = ("import sys; from runtime.media.outputs import OutputLock; "
            "lock = OutputLock(sys.argv[1], nested=sys.argv[2] == 'nested'); "
            "print('held', flush=True); sys.stdin.read()")
    return subprocess.Popen([sys.executable, "-c", code, str(target),
                             "nested" if nested else "plain"], cwd=rs.REPO, env=script_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_an_output_inside_another_runs_output_is_refused(tmp_path):
    """Before: a second run into OUT/00010.png of a running run exited 0, and the first then
    failed at its end (`Is a directory`), losing its masks."""
    out = tmp_path / "out"
    holder = hold_lock(out, nested=False)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"is inside {out}, which another run is writing "
                                              f"\\(pid {holder.pid}"):
            StagedFolder(out / "00010.png", index="run.json")
    finally:
        holder.communicate("", timeout=60)
    StagedFolder(out / "00010.png", index="run.json").abort()  # free once the run is over
    nested = hold_lock(out, nested=True)
    try:
        assert nested.stdout.readline().strip() == "held"
        StagedFolder(out / "video", index="run.json").abort()  # a corpus root: workers nest
    finally:
        nested.communicate("", timeout=60)


def test_a_dangling_link_above_the_output_is_refused(tmp_path):
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match=f"{tmp_path / 'dang'} is a symbolic link"):
        StagedFolder(tmp_path / "dang" / "sub", index="run.json")
    with pytest.raises(OutputError, match="symbolic link"):
        check_writable_dir(tmp_path / "dang" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dang"]  # nowhere/ not created


def test_a_run_into_an_output_removes_what_a_killed_run_staged_there(engine, video, tmp_path):
    """Before: a run killed with SIGKILL left `.OUT.partial-*/` and `.overlay.partial-*.mp4`
    beside its outputs, and no later run removed them. Staging of other targets stays."""
    _, folder, mask = video
    out, overlay = tmp_path / "k9", tmp_path / "k9.mp4"
    stale = [tmp_path / ".k9.partial-2x1f9q_a", tmp_path / ".k9.partial-8hd0zz4k.mp4"]
    stale[0].mkdir()
    (stale[0] / "00000.png").write_bytes(b"staged")
    stale[1].write_bytes(b"staged")
    # a file where a folder stages, other targets' staging, a user's folder of another name
    others = [tmp_path / ".k9.partial-notes123", tmp_path / ".k10.partial-8hd0zz4k",
              tmp_path / ".k9.partial-a1b2c3d4.avi", tmp_path / ".k9.partial-backup"]
    others[0].write_text("a user's")
    others[1].mkdir()
    others[2].write_bytes(b"another overlay's")
    others[3].mkdir()
    with Segmenter(engine, backend="ort-cpu") as seg:
        segment_video(seg, folder, mask, out, overlay=overlay, max_frames=3)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["k9", "k9.mp4", *(p.name for p in others)])


def test_an_interrupt_after_the_export_printed_its_result_does_not_fail_it(request, tmp_path):
    """Before: a Ctrl-C once the result line was out (the print, the interpreter's shutdown)
    killed the finished exporter by the signal, with a traceback: a script saw it fail."""
    ckpt = rs.cached_engine(request)[0]
    proc = subprocess.Popen(interruptible("export/to_onnx.py", str(ckpt), "--out",
                                          str(tmp_path / "gs"), "--size", "64", "128"),
                            cwd=rs.REPO, env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the result: the export is in place
        rc, err = interrupt(proc, signal.SIGINT)
    finally:
        proc.kill()
    assert json.loads(line)["out"] == str(tmp_path / "gs")
    assert rc == 0 and err == "", err
    assert Manifest.load(tmp_path / "gs").max_objects >= 1


def test_an_interrupt_while_the_export_moves_in_keeps_it_and_says_it_is_done(
        request, tmp_path, monkeypatch, capsys):
    """Before: a Ctrl-C held while the graphs were moved in was raised once they were in place:
    the export was complete, but the exporter said "interrupted: nothing written" (exit 130).
    Now the program reports it done; a library caller still learns of the interrupt."""
    from export import to_onnx
    from export.errors import ExportInterrupted

    ckpt = rs.cached_engine(request)[0]
    move_in = StagedFolder._move_in

    def interrupted_move_in(self: StagedFolder) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # held by the commit until the move is done
        move_in(self)

    monkeypatch.setattr(StagedFolder, "_move_in", interrupted_move_in)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(ExportInterrupted) as caught:
        to_onnx.export_checkpoint(ckpt, tmp_path / "lib", size=(64, 128))
    assert caught.value.manifest.graphs == Manifest.load(tmp_path / "lib").graphs
    try:
        rc = to_onnx.main([str(ckpt), "--out", str(tmp_path / "gs"), "--size", "64", "128"])
        # called in process (argv given), it leaves Ctrl-C working for whoever called it
        assert {s: signal.getsignal(s) for s in handlers} == handlers
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["out"] == str(tmp_path / "gs")
    m = Manifest.load(tmp_path / "gs")
    assert all((tmp_path / "gs" / g.file).is_file() for g in m.graphs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs", "lib"]


@pytest.mark.parametrize("mask, expect", [
    (np.ones((2, 480, 854), np.uint8), r"shape \(2, 480, 854\)"),
    (np.ones((0, 0), np.uint8), r"shape \(0, 0\)"),
    (np.full((480, 854), 0.5), "float64"),
    (np.full((480, 854), 300), "in 0..255"),
])
def test_a_mask_array_that_is_not_ids_is_refused(engine, video, tmp_path, mask, expect):
    _, folder, _ = video
    with Segmenter(engine, backend="ort-cpu") as seg, pytest.raises(MaskError, match=expect):
        segment_video(seg, folder, mask, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_stopped_by_sigterm_leaves_nothing(request, tmp_path):
    """Before: SIGTERM left .gs.lock and .gs.partial-* behind; Ctrl-C printed a traceback."""
    ckpt = rs.cached_engine(request)[0]
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        rc, err = signal_when_written("export/to_onnx.py", [str(ckpt), "--out",
                                      str(tmp_path / "gs"), "--size", "64", "128"],
                                      tmp_path, ".gs.partial-*", signum)
        assert rc == code, err
        assert err.strip().splitlines() == ["interrupted: nothing written"]
        assert list(tmp_path.iterdir()) == []
