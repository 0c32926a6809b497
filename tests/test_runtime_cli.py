"""runtime/run.py end to end on real DAVIS frames, and every bad input it must refuse cleanly.

Refusals: one `error: ...` line on stderr, exit code 1, nothing left in (or next to) OUT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import runtime_support as rs
from conftest import ONE, signal_when_written
from PIL import Image

from runtime import run as cli
from runtime.core.config import RuntimeConfig
from runtime.core.manifest import Manifest, graph_specs
from runtime.media.masks import read_mask
from runtime.media.palette import save_palette_png
from runtime.options import runtime_settings


@pytest.fixture(scope="module")
def engine(request) -> Path:
    return rs.cached_engine(request)[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """5 blackswan frames in their own folder + the first mask."""
    paths, mask = rs.davis_clip(ONE, 5)
    d = tmp_path_factory.mktemp("clip")
    for p in paths:
        shutil.copy(p, d / p.name)
    return d, mask


def test_script_end_to_end(engine, clip, tmp_path):
    frames, mask = clip
    out, overlay = tmp_path / "out", tmp_path / "vis" / "overlay.mp4"
    r = rs.run_cli("--engine-dir", engine, "--input", frames, "--mask", mask, "--output", out,
                "--overlay", overlay, "--mem-every", "1", "--quality-threshold", "0")
    assert r.returncode == 0, r.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(5)]
    for p in pngs:
        im = Image.open(p)
        assert im.mode == "P" and im.size == (854, 480)
        assert set(np.unique(np.array(im))) <= {0, 1}
        assert im.getpalette()[3:6] == [128, 0, 0]  # DAVIS colour of object 1
    # frame 0 is the given mask itself
    assert np.array_equal(np.array(Image.open(pngs[0])), read_mask(mask))
    log = json.loads((out / "run.json").read_text())
    assert log["backend"]["name"] in ("ort-cpu", "openvino", "openvino-bf16")  # auto on a CPU
    assert [f["frame"] for f in log["frames"]] == list(range(5))
    assert log["frames"][-1]["decision"] is None  # last frame of a finite input: no QAM
    assert log["summary"]["insertions"] == 3 and log["summary"]["evictions"] == 1
    held = sorted(log["frames"][3]["slots"].values())  # first + 2 dynamic, one of 1/2 evicted
    assert len(held) == 3 and held[0] == 0 and held[-1] == 3
    assert {"encoder", "memory_read", "decoder", "qam", "bank", "pre", "post"} <= set(
        log["frames"][1]["ms"])
    cap = cv2.VideoCapture(str(overlay))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_video_input_and_rerun_into_same_output(engine, clip, tmp_path):
    frames, mask = clip
    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (854, 480))
    for p in sorted(frames.glob("*.jpg")):
        w.write(cv2.imread(str(p)))
    w.release()
    out = tmp_path / "out"
    args = ["--engine-dir", str(engine), "--input", str(video), "--mask", str(mask),
            "--output", str(out), "--backend", "ort-cpu", "--max-frames", "3", "--quiet"]
    assert cli.main(args) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert json.loads((out / "run.json").read_text())["backend"]["name"] == "ort-cpu"
    assert cli.main(args) == 0  # an earlier run's folder is replaced


def test_smaller_mask_same_aspect_is_resized_with_warning(engine, clip, tmp_path, capsys):
    frames, mask = clip
    small = tmp_path / "small.png"
    Image.open(mask).resize((427, 240), Image.NEAREST).save(small)
    assert cli.main(["--engine-dir", str(engine), "--input", str(frames), "--mask", str(small),
                     "--output", str(tmp_path / "o"), "--backend", "ort-cpu", "--max-frames",
                     "2", "--quiet"]) == 0
    assert "resizing the mask" in capsys.readouterr().err


# ---------------------------------------------------------------------------- refusals
def refuse(capsys, tmp_path, **kw) -> str:
    """Run the CLI expecting a clean refusal; return the error line."""
    args = {"engine-dir": None, "input": None, "mask": None, "output": tmp_path / "out",
            "backend": "ort-cpu"}
    args.update({k.replace("_", "-"): v for k, v in kw.items()})
    argv = [x for k, v in args.items() if v is not None for x in (f"--{k}", str(v))]
    capsys.readouterr()
    assert cli.main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists(), "partial output left behind"
    assert not list(tmp_path.glob(".out.partial-*"))
    return err[0]


@pytest.fixture
def ok(engine, clip):
    return {"engine_dir": engine, "input": clip[0], "mask": clip[1]}


def test_missing_and_empty_input(ok, tmp_path, capsys):
    assert "input not found" in refuse(capsys, tmp_path, **{**ok, "input": tmp_path / "nope"})
    (tmp_path / "empty").mkdir()
    assert "holds no frames" in refuse(capsys, tmp_path, **{**ok, "input": tmp_path / "empty"})


def test_corrupt_frames(ok, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(ok["input"], bad)
    (bad / "00000.jpg").write_bytes(b"not a jpeg")
    assert "cannot decode frame" in refuse(capsys, tmp_path, **{**ok, "input": bad})
    # a corrupt frame in the middle: found mid-run, the partial output is removed
    shutil.copy(ok["input"] / "00000.jpg", bad / "00000.jpg")
    (bad / "00002.jpg").write_bytes(b"\xff\xd8 truncated")
    assert "00002.jpg" in refuse(capsys, tmp_path, **{**ok, "input": bad})


def test_frame_of_another_aspect_ratio_mid_video(ok, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(ok["input"], bad)
    Image.open(bad / "00002.jpg").resize((320, 240)).save(bad / "00002.jpg")
    msg = refuse(capsys, tmp_path, **{**ok, "input": bad})
    assert "frame 00002.jpg is 320x240 but the first frame is 854x480" in msg


def test_corrupt_and_empty_video(ok, tmp_path, capsys):
    v = tmp_path / "v.mp4"
    v.write_bytes(os.urandom(4096))
    msg = refuse(capsys, tmp_path, **{**ok, "input": v})
    assert "v.mp4" in msg
    v.write_bytes(b"")
    assert "empty" in refuse(capsys, tmp_path, **{**ok, "input": v})


def test_bad_masks(ok, tmp_path, capsys):
    assert "mask not found" in refuse(capsys, tmp_path, **{**ok, "mask": tmp_path / "no.png"})
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(empty)
    assert "empty" in refuse(capsys, tmp_path, **{**ok, "mask": empty})
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((480, 854), 128, np.uint8)).save(gray)
    assert "[128]" in refuse(capsys, tmp_path, **{**ok, "mask": gray})
    rgb = tmp_path / "rgb.png"
    a = np.zeros((480, 854, 3), np.uint8)
    a[:10, :10] = (1, 2, 3)
    Image.fromarray(a).save(rgb)
    assert "not DAVIS palette" in refuse(capsys, tmp_path, **{**ok, "mask": rgb})
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(wrong)
    assert "aspect ratio" in refuse(capsys, tmp_path, **{**ok, "mask": wrong})
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    assert "not a readable image" in refuse(capsys, tmp_path, **{**ok, "mask": junk})


def test_too_many_objects(ok, tmp_path, capsys):
    labels = np.zeros((480, 854), np.uint8)
    labels[:, :100], labels[:, 200:300], labels[:, 400:500] = 1, 2, 3
    three = tmp_path / "three.png"
    save_palette_png(labels, three)
    msg = refuse(capsys, tmp_path, **{**ok, "mask": three})
    assert "3 objects" in msg and "--max-objects 3" in msg


def test_bad_engine_dirs(ok, engine, tmp_path, capsys):
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert "no manifest.json" in refuse(capsys, tmp_path, **{**ok, "engine_dir": nothing})
    # graphs exported for another resolution than the manifest declares
    other = tmp_path / "other"
    shutil.copytree(engine, other)
    m = Manifest.load(other)
    _, c16, qam_size, _ = m.graphs["quality"].input("quality_features").shape
    specs = graph_specs(160, 224, m.max_objects, m.memory_size, m.key_dim, m.value_dim,
                        (c16, *m.graphs["decoder"].input("f8").shape[1:2],
                         *m.graphs["decoder"].input("f4").shape[1:2]), qam_size)
    specs = {g: dataclasses.replace(spec, sha256=m.graphs[g].sha256) for g, spec in specs.items()}
    d = json.loads((other / "manifest.json").read_text())
    d.update(height=160, graphs=json.loads(Manifest(**{**m.__dict__, "height": 160,
                                                       "graphs": specs}).to_json())["graphs"])
    (other / "manifest.json").write_text(json.dumps(d))
    msg = refuse(capsys, tmp_path, **{**ok, "engine_dir": other})
    assert "graph and manifest come from different exports" in msg
    (other / "encoder.onnx").unlink()
    assert "missing" in refuse(capsys, tmp_path, **{**ok, "engine_dir": other})


def test_corrupted_graph_is_refused(ok, engine, tmp_path, capsys):
    """4 KiB of the decoder's weights overwritten: the graph still parses and runs, so only the
    sha256 recorded at export can tell (before, this ran and gave wrong masks with exit 0)."""
    import onnx

    bad = tmp_path / "bad"
    shutil.copytree(engine, bad)
    path = bad / "decoder.onnx"
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at:at + 4096] = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    onnx.load(str(path))  # still a valid ONNX file
    msg = refuse(capsys, tmp_path, **{**ok, "engine_dir": bad})
    assert "decoder.onnx is corrupted or was changed after export" in msg
    # an older manifest without hashes is refused too, naming what to do
    d = json.loads((bad / "manifest.json").read_text())
    shutil.copy(engine / "decoder.onnx", path)
    d["graphs"]["qam"].pop("sha256")
    (bad / "manifest.json").write_text(json.dumps(d))
    assert "records no sha256 for qam.onnx" in refuse(capsys, tmp_path, **{**ok, "engine_dir": bad})


def test_backend_and_config_refusals(ok, tmp_path, capsys):
    assert "unknown backend 'tpu'" in refuse(capsys, tmp_path, **{**ok, "backend": "tpu"})
    assert "no TensorRT engine" in refuse(capsys, tmp_path, **{**ok, "backend": "trt"})
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "onnxruntime-gpu" in refuse(capsys, tmp_path, **{**ok, "backend": "ort-cuda"})
    assert "exceeds the 2 dynamic slots" in refuse(capsys, tmp_path,
                                                   **{**ok, "memory_size": 5})
    assert "mem_every=0" in refuse(capsys, tmp_path, **{**ok, "mem_every": 0})



def test_every_command_reads_the_runtime_settings_alike():
    """run.py, batch.py and evaluate.py declare the settings once (runtime.options): the same
    flags give the same RuntimeConfig, and leaving them out gives the manifest's values."""
    from benchmarks import evaluate
    from runtime import batch

    flags = ["--memory-size", "3", "--mem-every", "4", "--quality-threshold", "0.7",
             "--fit", "stretch", "--locality", "0.25"]
    run_args = cli.parse_args(["--engine-dir", "e", "--input", "i", "--mask", "m.png",
                               "--output", "o", *flags])
    batch_args = batch.parse_args(["--engine-dir", "e", "--videos", "v", "--output", "o", *flags])
    eval_args = evaluate.parse_args(["--engine-dir", "e", "--data", "d", "--out", "o", *flags])
    want = RuntimeConfig(memory_size=3, mem_every=4, quality_threshold=0.7, fit="stretch",
                         locality=0.25)
    for args in (run_args, batch_args, eval_args):
        assert RuntimeConfig(**runtime_settings(args)) == want
    assert evaluate.runtime_config(eval_args) == dataclasses.replace(want, threads=None)
    bare = cli.parse_args(["--engine-dir", "e", "--input", "i", "--mask", "m.png",
                           "--output", "o"])
    assert RuntimeConfig(**runtime_settings(bare)) == RuntimeConfig()



@pytest.mark.parametrize("option, value, message", [
    ("quality_threshold", 2, "quality_threshold=2.0: expected a number in [0, 1]"),
    ("quality_threshold", -0.1, "quality_threshold=-0.1"),
    ("quality_threshold", "nan", "quality_threshold=nan"),
    ("threads", 0, "threads=0"), ("device", -1, "device=-1"), ("memory_size", 0, "memory_size=0"),
    ("max_frames", 0, "--max-frames 0"), ("locality", -1, "locality=-1.0: expected a number >= 0"),
    ("locality", "nan", "locality=nan"),
])
def test_numeric_ranges(ok, tmp_path, capsys, option, value, message):
    """Before, --quality-threshold 2 was accepted and silently memorised nothing."""
    assert message in refuse(capsys, tmp_path, **{**ok, option: value})


def test_unwritable_outputs_refused_before_the_first_frame(ok, tmp_path, capsys, monkeypatch):
    """Before, `--overlay /proc/x.mp4` failed after the whole video and lost every mask."""
    def no_backend(*args, **kwargs):
        raise AssertionError("the graphs were loaded before the outputs were checked")

    monkeypatch.setattr(cli, "create_backend", no_backend)
    assert "x.mp4" in refuse(capsys, tmp_path, **{**ok, "overlay": "/proc/x.mp4"})
    (tmp_path / "file").write_text("")
    assert "not a folder" in refuse(capsys, tmp_path, **{**ok, "output": tmp_path / "file"})
    assert "cannot create the folder" in refuse(capsys, tmp_path,
                                                **{**ok, "output": tmp_path / "file" / "o"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_users_files_in_the_output_folder_are_kept(ok, tmp_path, capsys):
    """Only what an earlier run wrote is replaced; a user's file of an output name is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    argv = ["--engine-dir", str(ok["engine_dir"]), "--input", str(ok["input"]), "--mask",
            str(ok["mask"]), "--output", str(out), "--quiet", "--max-frames", "2"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.png", "00001.png", "precious.txt", "run.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "00000.png").write_bytes(b"my mask")
    capsys.readouterr()
    assert cli.main([*argv[:7], str(mine), *argv[8:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no earlier run of this tool wrote" in err[0], err
    assert (mine / "00000.png").read_bytes() == b"my mask"


def test_runtime_is_torch_free(engine, clip, tmp_path):
    """Import every runtime module and run the CLI with torch (and training) unimportable."""
    fake = tmp_path / "fake"
    for name in ("torch", "training"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is banned here')\n")
    code = (
        "import importlib, pkgutil, sys, runtime\n"
        "mods = [m.name for m in pkgutil.walk_packages(runtime.__path__, 'runtime.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "assert 'torch' not in sys.modules and 'training' not in sys.modules\n"
        "from runtime import run\n"
        f"rc = run.main(['--engine-dir', r'{engine}', '--input', r'{clip[0]}', '--mask', "
        f"r'{clip[1]}', '--output', r'{tmp_path / 'out'}', '--max-frames', '3', '--quiet'])\n"
        "assert 'torch' not in sys.modules, 'a runtime path imported torch'\n"
        "print(len(mods), 'modules'); sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(rs.REPO)])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_live_source_no_lookahead_and_ctrl_c_keeps_output(engine, clip, tmp_path, monkeypatch):
    """A camera/stream: no look-ahead (the last frame is memorised too); Ctrl-C keeps results."""
    from runtime.media.sources import FrameSource, read_frame

    frames, mask = clip
    paths = sorted(frames.glob("*.jpg"))

    class Live(FrameSource):
        def __init__(self, stop_after: int):
            super().__init__("fake camera", None, None, True)
            self.stop_after = stop_after

        def __iter__(self):
            for i, p in enumerate(paths):
                if i == self.stop_after:
                    raise KeyboardInterrupt
                yield read_frame(p)

    out = tmp_path / "out"
    argv = ["--engine-dir", str(engine), "--input", "0", "--mask", str(mask), "--output",
            str(out), "--backend", "ort-cpu", "--quiet"]
    monkeypatch.setattr(cli, "open_source", lambda src: Live(stop_after=99))
    assert cli.main(argv) == 0
    log = json.loads((out / "run.json").read_text())
    assert log["frames"][-1]["decision"] is not None and not log["interrupted"]
    monkeypatch.setattr(cli, "open_source", lambda src: Live(stop_after=3))
    assert cli.main(argv) == 130
    log = json.loads((out / "run.json").read_text())
    assert log["interrupted"] and len(list(out.glob("*.png"))) == 3


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> tuple[Path, Path]:
    """600 frames (the demo clip's 50 linked over and over): a run lasts long enough to be
    signalled while it works, on any machine."""
    layout = rs.demo_layout()
    src = sorted(layout.frames_dir(ONE).glob("*.jpg"))
    d = tmp_path_factory.mktemp("long")
    for i in range(600):
        (d / f"{i:05d}.jpg").symlink_to(src[i % len(src)])
    return d, layout.annotation(ONE, "00000")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_finished_frames(engine, long_clip, tmp_path, signum, code):
    """A real process and a real signal once frames are being written. Before, SIGINT exited 0
    and SIGTERM killed the process leaving a hidden `.out.partial-*` folder behind."""
    out = tmp_path / "out"
    rc, err = signal_when_written(
        "runtime/run.py", ["--engine-dir", str(engine), "--input", str(long_clip[0]), "--mask",
                           str(long_clip[1]), "--output", str(out), "--backend", "ort-cpu",
                           "--threads", "1", "--quiet"],
        tmp_path, ".out.partial-*/00002.png", signum)
    assert rc == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no hidden partial folder
    log = json.loads((out / "run.json").read_text())
    n = len(log["frames"])
    assert log["interrupted"] and 3 <= n < 600 and log["summary"]["frames"] == n
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(n)]
    for p in (out / "00000.png", out / f"{n - 1:05d}.png"):
        assert Image.open(p).size == (854, 480)
