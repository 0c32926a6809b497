"""runtime/batch.py: a corpus of clips (made from the demo clips) on a local 2-CPU Ray.

One Ray session is shared by the in-process tests (module fixture); the Ctrl-C test runs the
CLI in its own process. Setup errors are checked in subprocesses that never start Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs
from conftest import ONE, TWO, interruptible, script_env
from PIL import Image

from runtime.corpus import CorpusError, Video, list_videos
from runtime.media.davis import DavisLayout


def add_video(root: Path, name: str, clip: str, start: int, n: int) -> None:
    """Frames start..start+n-1 of a demo clip as video `name` (renumbered from 00000), with
    their ground truth, in the DAVIS layout under `root`."""
    layout, demo = DavisLayout(root), rs.demo_layout()
    layout.frames_dir(name).mkdir(parents=True)
    layout.annotations_dir(name).mkdir(parents=True)
    for i in range(n):
        shutil.copy(demo.frames_dir(clip) / f"{start + i:05d}.jpg",
                    layout.frames_dir(name) / f"{i:05d}.jpg")
        shutil.copy(demo.annotation(clip, f"{start + i:05d}"), layout.annotation(name, f"{i:05d}"))


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def pngs(folder: Path) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))]


@pytest.fixture(scope="module")
def engine(request) -> Path:
    return rs.cached_engine(request)[1]


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """Three 6-frame videos; frame 3 of `bad` is corrupt (its bytes kept in `bad.jpg`)."""
    root = tmp_path / "corpus"
    add_video(root, "swan", ONE, 0, 6)
    add_video(root, "cows", TWO, 0, 6)
    add_video(root, "bad", ONE, 20, 6)
    frame = DavisLayout(root).frames_dir("bad") / "00003.jpg"
    shutil.copy(frame, tmp_path / "bad.jpg")
    frame.write_bytes(frame.read_bytes()[:200] + b"\x00garbage" * 64)
    return root


def batch(engine: Path, videos: Path, out: Path, *extra: str) -> list[str]:
    return ["--engine-dir", str(engine), "--videos", str(videos), "--output", str(out),
            "--backend", "ort-cpu", "--workers", "2", "--threads-per-worker", "1", "--quiet",
            *extra]


def summary(out: Path) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads((out / "summary.json").read_text())["videos"]}


# ------------------------------------------------------------------------ corpus on Ray
def test_failure_stays_local_and_rerun_resumes(engine, ray_session, corpus, tmp_path, capsys):
    from runtime import batch as cli
    from runtime import run

    layout = DavisLayout(corpus)
    out = tmp_path / "out"
    assert cli.main(batch(engine, corpus, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: 1 of 3 videos failed: bad (cannot decode frame "), err
    assert "00003.jpg" in err[0]
    s = summary(out)
    assert [s[n]["status"] for n in ("bad", "cows", "swan")] == ["failed", "done", "done"]
    assert "00003.jpg" in s["bad"]["error"] and s["bad"]["frames"] is None
    assert s["swan"]["frames"] == 6 and s["swan"]["attempts"] == 1 and s["swan"]["model_fps"] > 0
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("name,status,frames,model_fps,wall_fps,insertions,evictions")
    assert sorted(r.split(",")[1] for r in rows[1:]) == ["done", "done", "failed"]
    assert sorted(p.name for p in out.iterdir()) == ["cows", "summary.csv", "summary.json", "swan"]

    # the same masks and memory decisions as runtime/run.py on the same inputs
    for name in ("swan", "cows"):
        ref = tmp_path / "ref" / name
        assert run.main(["--engine-dir", str(engine), "--input", str(layout.frames_dir(name)),
                         "--mask", str(layout.annotation(name, "00000")), "--output",
                         str(ref), "--backend", "ort-cpu", "--threads", "1", "--quiet"]) == 0
        got, want = pngs(out / name), pngs(ref)
        assert len(got) == len(want) == 6
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), name
        logs = [json.loads((d / "run.json").read_text()) for d in (out / name, ref)]
        assert [f["decision"] for f in logs[0]["frames"]] == [f["decision"] for f in logs[1]["frames"]]
    capsys.readouterr()

    # rerun after repairing the frame: the two finished videos are skipped, `bad` is redone
    shutil.copy(tmp_path / "bad.jpg", layout.frames_dir("bad") / "00003.jpg")
    stamp = {n: (out / n / "run.json").stat().st_mtime_ns for n in ("swan", "cows")}
    assert cli.main(batch(engine, corpus, out)) == 0
    s = summary(out)
    assert [s[n]["status"] for n in ("bad", "cows", "swan")] == ["done", "skipped", "skipped"]
    assert s["swan"]["frames"] == 6 and s["swan"]["model_fps"] > 0  # read from its run.json
    assert {n: (out / n / "run.json").stat().st_mtime_ns for n in stamp} == stamp
    assert len(pngs(out / "bad")) == 6

    # other settings: every video is redone
    assert cli.main(batch(engine, corpus, out, "--mem-every", "2")) == 0
    assert {v["status"] for v in summary(out).values()} == {"done"}
    assert json.loads((out / "swan" / "run.json").read_text())["config"]["mem_every"] == 2


def test_dead_worker_restarted_and_video_retried_once(engine, ray_session, corpus, tmp_path):
    """A worker process that exits mid-video (overlay on, so it leaves a staged folder and a
    staged mp4) is restarted by Ray; its video is retried once and a video that kills its
    worker twice is recorded as failed."""
    from ray import cloudpickle

    from runtime import batch as cli
    from runtime.core.config import RuntimeConfig
    from runtime.core.manifest import Manifest
    from runtime.corpus import engine_fingerprint

    marks = tmp_path / "marks"
    marks.mkdir()

    class Dying(cli.VideoWorker):
        """Exits the process at frame 3 of `swan` (first attempt only) and of `cows` (always)."""

        def segment(self, video, output, key, settings):
            first = not (marks / video.name).exists()
            if video.name == "cows" or (video.name == "swan" and first):
                (marks / video.name).touch()
                step = self.segmenter.step

                def dying_step(frame, **kw):
                    if self.segmenter.frame_index >= 2:
                        os._exit(1)
                    return step(frame, **kw)

                self.segmenter.step = dying_step
            return super().segment(video, output, key, settings)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    manifest = Manifest.load(engine)
    config = RuntimeConfig(threads=1).resolve(manifest)
    settings = cli.Settings("ort-cpu", config.memory_size, config.mem_every,
                            config.quality_threshold, config.fit, config.locality,
                            config.quality_score, None, overlay=True)
    videos = [v for v in list_videos(corpus) if v.name != "bad"]
    out = tmp_path / "out"
    result = cli.run_corpus(engine, videos, out, settings, cli.Plan(1, 1, 0), config,
                            engine_fingerprint(manifest), progress=False, worker=Dying)
    by = {o.name: o for o in result.outcomes}
    assert by["swan"].status == "done" and by["swan"].attempts == 2 and by["swan"].frames == 6, by["swan"].error
    assert by["cows"].status == "failed" and by["cows"].attempts == 2
    assert "worker died twice" in by["cows"].error
    # nothing staged is left behind: no hidden folder, no partial overlay, no empty cows/
    assert sorted(p.name for p in out.iterdir()) == ["swan"]
    assert sorted(p.name for p in (out / "swan").iterdir()) == [
        *(f"{i:05d}.png" for i in range(6)), "overlay.mp4", "run.json"]


def test_interrupt_waits_for_killed_workers_to_exit(ray_session):
    """Ray fails a killed worker's task while its process may still run (and create or write a
    staging folder); Ctrl-C's clean-up waits for the process itself to be gone first."""
    from runtime import batch as cli

    @ray_session.remote(num_cpus=1)
    class Busy:
        def where(self) -> str:
            return f"{ray_session.util.get_node_ip_address()}:{os.getpid()}"

        def spin(self) -> None:
            while True:
                pass

    actor = Busy.remote()
    where = ray_session.get(actor.where.remote())
    ref = actor.spin.remote()
    ray_session.kill(actor, no_restart=True)
    ready, _ = ray_session.wait([ref], timeout=30)
    assert ready
    cli._wait_until_exited([where], deadline=time.monotonic() + 30)
    assert not cli._alive(int(where.rsplit(":", 1)[1]))


def test_gpu_backend_asks_ray_for_a_gpu(engine, ray_session, corpus, tmp_path, capsys):
    from runtime import batch as cli

    assert cli.Plan(2, 1, 1).options()["num_gpus"] == 1
    out = tmp_path / "out"
    argv = batch(engine, corpus, out)
    argv[argv.index("ort-cpu")] = "trt"
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --backend trt: 2 worker(s) need 2 GPU(s), the Ray cluster has 0"]
    assert not out.exists()


def test_evaluate_scores_an_output_folder(engine, ray_session, corpus, tmp_path, capsys):
    """evaluate.py --predictions OUT gives what evaluating the runtime live gives."""
    from benchmarks import evaluate
    from runtime import batch as cli

    shutil.rmtree(DavisLayout(corpus).frames_dir("bad"))
    shutil.rmtree(DavisLayout(corpus).annotations_dir("bad"))
    out = tmp_path / "out"
    assert cli.main(batch(engine, corpus, out)) == 0
    common = ["--data", str(corpus), "--sequences", "cows,swan", "--no-progress"]
    assert evaluate.main(["--predictions", str(out), "--out", str(tmp_path / "a"), *common]) == 0
    assert evaluate.main(["--engine-dir", str(engine), "--backend", "ort-cpu", "--threads", "1",
                          "--out", str(tmp_path / "b"), *common]) == 0
    for f in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    rows = (tmp_path / "a" / "per-sequence_results-val.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["cows_1", "cows_2", "swan_1"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_cleanly_and_says_what_finished(engine, tmp_path, sig, code):
    """Ctrl-C (or SIGTERM) after the first video: the workers are stopped, the video in flight
    leaves nothing (unless it finished before its worker was gone), the others never start."""
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    root = tmp_path / "corpus"
    for i in range(5):
        add_video(root, f"v{i}", ONE, 9 * i, 12)
    out = tmp_path / "out"
    argv = batch(engine, root, out)
    argv[argv.index("--workers") + 1] = "1"
    argv.remove("--quiet")
    p = subprocess.Popen(interruptible("runtime/batch.py", *argv), cwd=rs.REPO,
                         env=script_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         text=True)
    try:
        lines = []
        for line in p.stderr:  # tqdm's \r-separated updates read as lines too
            lines.append(line.strip())
            if line.startswith("done v0"):
                p.send_signal(sig)
                break
        rest = p.stderr.read()
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert any(x.startswith("done v0") for x in lines), lines
    assert rc == code, rest[-2000:]
    s = summary(out)
    status = [s[f"v{i}"]["status"] for i in range(5)]
    assert status[0] == "done" and status[1] in ("interrupted", "done"), status
    assert status[2:] == ["not run"] * 3
    done = [f"v{i}" for i in range(5) if status[i] == "done"]
    final = rest.strip().splitlines()[-1]
    assert final.startswith(f"interrupted: {len(done)} of 5 videos finished ({', '.join(done)}); "
                            ), final
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json", *done]
    assert all(len(pngs(out / name)) == 12 for name in done)


# ------------------------------------------------------------- refusals before any work
def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "runtime/batch.py", *map(str, args)], cwd=rs.REPO,
                          capture_output=True, text=True, timeout=300, check=False,
                          env=env or script_env())


@pytest.mark.parametrize("case", ["videos", "address", "output"])
def test_setup_errors_one_line_nothing_written(engine, corpus, tmp_path, case):
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    (tmp_path / "a_file").write_text("x")
    out, extra = tmp_path / "out", []
    videos = corpus
    if case == "videos":
        videos = tmp_path / "not_davis"
        videos.mkdir()
        expect = "is not a DAVIS-layout root"
    elif case == "address":
        extra, expect = ["--address", "ray://127.0.0.1:1"], "cannot reach Ray at ray://127.0.0.1:1"
    else:
        out, expect = tmp_path / "a_file" / "out", "a_file"
    before = tree(tmp_path)
    r = run_cli(*batch(engine, videos, out, *extra))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and expect in lines[0], lines
    assert tree(tmp_path) == before


@pytest.mark.parametrize("option, value, expect", [
    ("--workers", "0", "--workers 0: expected >= 1"),
    ("--threads-per-worker", "-1", "--threads-per-worker -1: expected >= 1"),
    ("--max-frames", "0", "--max-frames 0: expected >= 1"),
    ("--quality-threshold", "2", "quality_threshold=2.0: expected a number in [0, 1]"),
    ("--backend", "cuda", "unknown backend 'cuda'"),
])
def test_bad_options_one_line(engine, corpus, tmp_path, capsys, option, value, expect):
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    from runtime import batch as cli

    argv = batch(engine, corpus, tmp_path / "out")
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {expect}"), err
    assert not (tmp_path / "out").exists()


def test_without_ray_one_line(engine, corpus, tmp_path):
    """Only the corpus runner needs Ray; without it, one line says how to get it."""
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('ray is banned here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(rs.REPO)])}
    r = run_cli(*batch(engine, corpus, tmp_path / "out"), env=env)
    expect = ("error: the corpus runner needs Ray: pip install 'qdmn-deploy[cluster]' "
              "(or pip install 'ray[client]')")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [expect], r.stderr
    assert not (tmp_path / "out").exists()


def test_only_the_corpus_runner_imports_ray():
    code = ("import importlib, pkgutil, sys, runtime\n"
            "for m in pkgutil.walk_packages(runtime.__path__, 'runtime.'):\n"
            "    if m.name != 'runtime.batch': importlib.import_module(m.name)\n"
            "assert 'ray' not in sys.modules, 'a runtime module other than batch imported ray'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=rs.REPO, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------ corpus listing
def test_list_videos_from_csv_json_and_davis(tmp_path):
    add_video(tmp_path / "d", "a", ONE, 0, 2)
    assert list_videos(tmp_path / "d") == [Video(
        "a", DavisLayout(tmp_path / "d").frames_dir("a").absolute(),
        DavisLayout(tmp_path / "d").annotation("a", "00000").absolute())]
    (tmp_path / "l.csv").write_text("input,mask\nd/JPEGImages/480p/a,m.png\n\nclip.mp4,m.png,x\n")
    assert [(v.name, v.input.name, v.mask) for v in list_videos(tmp_path / "l.csv")] == [
        ("a", "a", tmp_path / "m.png"), ("x", "clip.mp4", tmp_path / "m.png")]
    (tmp_path / "l.json").write_text(json.dumps([{"input": "cam1.mp4", "mask": "m.png"},
                                                 ["cam2.mp4", "n.png", "two"]]))
    assert [v.name for v in list_videos(tmp_path / "l.json")] == ["cam1", "two"]
    (tmp_path / "2024").mkdir()  # a frame folder named like a camera index is a folder
    (tmp_path / "n.csv").write_text("2024,m.png\n")
    assert [(v.name, v.input) for v in list_videos(tmp_path / "n.csv")] == [
        ("2024", tmp_path / "2024")]


@pytest.mark.parametrize("content, expect", [
    ("a.mp4,m.png\nb/a.mp4,m.png\n", "would both write a/"),
    ("a.mp4\n", "line 1: expected input,mask[,name]"),
    ("a.mp4,m.png,.hidden\n", "cannot name an output folder"),
    ("a.mp4,m.png,summary.json\n", "cannot name an output folder"),
    ("", "lists no video"),
    ("rtsp://cam/1,m.png\n", "is a live source"),
])
def test_list_videos_refusals(tmp_path, content, expect):
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(CorpusError, match=re.escape(expect)):
        list_videos(tmp_path / "l.csv")


def test_throughput_benchmark_writes_its_json(engine, tmp_path):
    """benchmarks/batch_throughput.py end to end (one tiny run; no timing is asserted)."""
    pytest.importorskip("ray", reason="the [cluster] extra (ray) is not installed")
    from benchmarks import batch_throughput as bench

    assert bench.main(["--engine-dir", str(engine), "--layouts", "2x1", "--clips", "3",
                       "--frames", "4", "--repeats", "1", "--backend", "ort-cpu",
                       "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "batch_throughput.json").read_text())
    assert doc["corpus"]["frames"] == 12 and doc["order"] == ["2x1"]
    [run] = doc["runs"]
    assert (run["workers"], run["threads_per_worker"], run["videos"], run["frames"]) == (2, 1, 3, 12)
    assert run["frames_per_s"] > 0 and run["cpu_ms_per_frame"] > 0
    assert doc["median"][0]["layout"] == "2x1" and doc["machine"]["cpu_model"]
    assert bench.parse_layouts("1x2, 2x1") == [(1, 2), (2, 1)]
    with pytest.raises(bench.BenchmarkError, match="WORKERSxTHREADS"):
        bench.parse_layouts("2")
