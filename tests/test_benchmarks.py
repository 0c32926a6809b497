"""benchmarks/long_video.py and benchmarks/speed.py run end to end on the cached tiny engine and
write well-formed tables, JSON and plots. No timing is asserted (shared CI machines)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs
from conftest import ONE, demo_root

from benchmarks import long_video as lv
from benchmarks import read_options, speed
from benchmarks.common import Clip, davis_mask_for, default_input, parse_ints, table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(request) -> tuple[Path, Path]:
    return rs.cached_engine(request)


def clip_args() -> list[str]:
    """The shipped demo clip (the scripts' default) with its mask found from the layout."""
    return ["--input", str(default_input()), "--mask", str(davis_mask_for(default_input())),
            "--max-source-frames", "12"]


# ------------------------------------------------------------------------------------- units
def test_ping_pong_plays_forward_then_backward() -> None:
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(4)]
    clip = Clip(frames, np.ones((2, 2), np.uint8), "x", "m")
    order = [int(clip.ping_pong(t)[0, 0, 0]) for t in range(10)]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    one = Clip(frames[:1], np.ones((2, 2), np.uint8), "x", "m")
    assert all(one.ping_pong(t) is frames[0] for t in range(3))


def test_windowed_fps_and_report_points() -> None:
    ms = [500.0] + [10.0] * 20 + [20.0] * 20  # frame 0 (start) is never counted
    assert lv.windowed_fps(ms, 20) == [(20, 100.0), (40, 50.0)]
    assert lv.fps_around(ms, 10, 10) == 100.0
    assert lv.fps_around(ms, 41, 10) == 50.0  # the end of the run: the last window
    assert lv.fps_around(ms, 42, 10) is None  # not reached
    row = lv.summarize_run(
        {"label": "a", "memory_size": 2, "graph_slots": 4, "frames_run": 41,
         "peak_rss_mb": 9.0, "stop_reason": "frames", "device_mb": [],
         "per_frame": {"ms": ms, "cpu_ms": [15.0] * 21 + [30.0] * 20,
                       "rss_mb": [1.0] * 5 + [3.0] * 36,
                       "memory_frames": [1] * 41, "bank_mb": [0.5] * 41}},
        window=10, warmup=2, report_at=[10, 1000])
    assert row["rss_growth_after_warmup_mb"] == 2.0
    assert row["fps_at"] == {"10": 100.0, "1000": None}
    assert row["cpu_ms_at"] == {"10": 15.0, "1000": None}
    assert "FPS@1000" in lv.format_runs([row], [10, 1000])


def test_davis_mask_and_int_lists(tmp_path: Path) -> None:
    seq = tmp_path / "JPEGImages/480p/bear"
    ann = tmp_path / "Annotations/480p/bear"
    seq.mkdir(parents=True)
    assert davis_mask_for(seq) is None
    ann.mkdir(parents=True)
    (ann / "00000.png").write_bytes(b"")
    assert davis_mask_for(seq) == ann / "00000.png"
    assert parse_ints("5, 10,5,,25", "x") == [5, 10, 25]
    with pytest.raises(Exception, match="must be >= 1"):
        parse_ints("0", "x")
    assert table(["a", "b"], [["x", None], ["yy", 1.234]]).splitlines()[2].endswith("-")


# ---------------------------------------------------------------------------------- scripts
def test_long_video_outputs(engine, tmp_path: Path, capsys) -> None:
    ckpt, graphs = engine
    out = tmp_path / "out"
    rc = lv.main(["--engine-dir", str(graphs), "--checkpoint", str(ckpt), "--frames", "30",
                  "--memory-sizes", "1,2", "--unbounded", "--unbounded-max-frames", "20",
                  "--read-scaling", "1,2", "--read-iters", "2", "--backend", "ort-cpu",
                  "--threads", "1", "--window", "10", "--warmup", "5", "--report-at", "10,30",
                  "--in-process", "--no-progress", "--out", str(out), *clip_args()])
    assert rc == 0
    text = capsys.readouterr().out
    assert "QDMN beta=1" in text and "PyTorch unbounded" in text and "FPS@30" in text
    data = json.loads((out / "long_video.json").read_text())
    assert data["machine"]["cpu_model"] and data["machine"]["threads"] == 1
    assert "onnxruntime" in data["machine"]["versions"]
    assert data["engine"]["checkpoint_sha256"] == data["checkpoint"]["sha256"]
    assert [r["label"] for r in data["summary"]] == ["QDMN beta=1", "QDMN beta=2",
                                                     "PyTorch unbounded"]
    for run in data["runs"]:
        n = run["frames_run"]
        assert all(len(v) == n for v in run["per_frame"].values())
        assert run["backend"]["name"] == ("ort-cpu" if run["kind"] == "qdmn" else "torch")
        assert set(run["mean_ms"]) >= {"encoder", "memory_read", "decoder", "qam", "total"}
    qdmn, unbounded = data["runs"][0], data["runs"][2]
    assert qdmn["frames_run"] == 30 and unbounded["frames_run"] <= 20
    assert max(qdmn["per_frame"]["memory_frames"]) <= 2  # first frame + beta=1
    assert unbounded["graph_slots"] is None
    for row in data["summary"]:
        assert set(row["fps_at"]) == {"10", "30"} and row["peak_rss_mb"] > 0
    assert data["summary"][2]["fps_at"]["30"] is None  # stopped at 20 frames
    rows = data["read_scaling"]["rows"]
    assert [r["memory_size"] for r in rows] == [1, 2] and [r["slots"] for r in rows] == [3, 4]
    assert all(r["ms_median"] > 0 and r["torch_ms_median"] > 0 for r in rows)
    for png in ("long_video.png", "read_scaling.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_long_video_isolated_run(engine, tmp_path: Path) -> None:
    """The default mode: each run in a fresh (spawned) process."""
    _, graphs = engine
    out = tmp_path / "out"
    rc = lv.main(["--engine-dir", str(graphs), "--frames", "6", "--memory-sizes", "2",
                  "--backend", "ort-cpu", "--threads", "1", "--no-progress", "--out", str(out),
                  *clip_args()])
    assert rc == 0
    data = json.loads((out / "long_video.json").read_text())
    assert data["settings"]["isolated_processes"] and data["runs"][0]["frames_run"] == 6


def test_long_video_refuses_bad_requests(engine, tmp_path: Path, capsys) -> None:
    _, graphs = engine
    base = ["--engine-dir", str(graphs), "--frames", "5", "--out", str(tmp_path), *clip_args()]
    assert lv.main([*base, "--memory-sizes", "3"]) == 1
    assert "exceed the 2 slots" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the engine's checkpoint")
    assert lv.main([*base, "--unbounded", "--checkpoint", str(other)]) == 1
    assert "not the checkpoint the engine was exported from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lv.main([*base, "--unbounded"])  # needs --checkpoint
    assert not (tmp_path / "long_video.json").exists()


@pytest.mark.parametrize("extra", [
    ["--threads", "0"], ["--device", "-1"], ["--unbounded-max-frames", "0"],
    ["--unbounded-cap-mb", "-1"], ["--unbounded-cap-mb", "nan"], ["--unbounded-max-seconds", "-5"],
    ["--frames", "0"], ["--warmup", "-1"]])
def test_long_video_range_checks(engine, tmp_path: Path, capsys, extra) -> None:
    _, graphs = engine
    with pytest.raises(SystemExit) as e:
        lv.main(["--engine-dir", str(graphs), "--out", str(tmp_path), *extra])
    assert e.value.code == 2 and extra[0] in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--max-source-frames", "0"], ["--device", "-2"],
                                   ["--frames", "1"], ["--threads", "0"]])
def test_speed_range_checks(engine, tmp_path: Path, capsys, extra) -> None:
    _, graphs = engine
    with pytest.raises(SystemExit) as e:
        speed.main(["--engine-dir", str(graphs), "--out", str(tmp_path), *extra])
    assert e.value.code == 2 and extra[0] in capsys.readouterr().err


def test_unwritable_out_refused_before_any_run(engine, tmp_path: Path, capsys,
                                               monkeypatch) -> None:
    _, graphs = engine

    def no_runs(*args, **kwargs):
        raise AssertionError("ran before checking --out")

    monkeypatch.setattr(lv, "execute", no_runs)
    monkeypatch.setattr(speed, "run_variants", no_runs)
    for main in (lv.main, speed.main):
        assert main(["--engine-dir", str(graphs), "--out", "/proc/qdmn", *clip_args()]) == 1
        assert "/proc/qdmn" in capsys.readouterr().err


def test_speed_outputs(engine, tmp_path: Path, capsys) -> None:
    ckpt, graphs = engine
    out = tmp_path / "out"
    rc = speed.main(["--engine-dir", str(graphs), "--checkpoint", str(ckpt),
                     "--variants", "ort-cpu,torch-bf16,torch-fp32,ort-cpu-int8",
                     "--int8-engine-dir", str(graphs),  # fp32: the int8 variant is skipped
                     "--frames", "4", "--warmup", "2", "--threads", "1", "--out", str(out),
                     *clip_args()])
    assert rc == 0
    text = capsys.readouterr().out
    assert "torch-fp32" in text and "skipped ort-cpu-int8" in text and "memory_read" in text
    data = json.loads((out / "speed.json").read_text())
    assert data["settings"]["threads"] == 1 and data["machine"]["cpu_model"]
    res = {r["variant"]: r for r in data["results"]}
    assert list(res) == ["torch-fp32", "ort-cpu", "torch-bf16", "ort-cpu-int8"]
    assert "is fp32" in res["ort-cpu-int8"]["skipped"]
    for name in ("torch-fp32", "torch-bf16", "ort-cpu"):
        r = res[name]
        assert r["frames"] == 4 and r["fps"] > 0
        assert set(r["mean_ms"]) >= set(speed.STAGES) | {"total"}
        assert r["speedup_vs_torch_fp32"] > 0 and r["speedup_vs_best_torch"] > 0
        assert 0 <= r["iou_vs_torch_fp32"] <= 1
    assert res["torch-fp32"]["speedup_vs_torch_fp32"] == 1.0
    assert res["torch-bf16"]["precision"] == "bf16 autocast"
    assert (out / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_read_options_outputs(engine, tmp_path: Path, capsys) -> None:
    _, graphs = engine
    out = tmp_path / "out"
    rc = read_options.main(["--engine-dir", str(graphs), "--iters", "1", "--threads", "1",
                            "--out", str(out), *clip_args()[:4]])
    assert rc == 0
    assert "deployed" in capsys.readouterr().out
    data = json.loads((out / "read_options.json").read_text())
    rows = {(r["option"], r["engine"]): r for r in data["options"]}
    assert {("gather-elements", "onnxruntime"), ("deployed", "onnxruntime"),
            ("two-stage-topk", "onnxruntime")} <= set(rows)
    for r in rows.values():
        if "skipped" not in r:  # every exact option reproduces memory_readout
            assert r["ms_median"] > 0 and (r["max_abs_diff_vs_reference"] < 1e-3 or
                                           not r["exact"])
    assert 0 <= data["bf16_affinity"]["rows_changed_fraction"] <= 1
    parts = data["parts_onnxruntime"]
    assert parts["topk_ms_median"] > 0 and parts["gemm+topk_ms_median"] > 0


def test_official_speed_checkpoint_is_official_with_a_constant_score() -> None:
    import torch

    from benchmarks.official_speed_checkpoint import speed_only_model
    from training.checkpoint import load_state, official_config
    from training.model import QDMN

    state = speed_only_model().state_dict()
    model = QDMN(official_config(state))
    load_state(model, state, "speed-only")  # the official names and shapes
    assert model.cfg.backbone == "resnet50" and model.cfg.score_activation == "relu"
    with torch.no_grad():
        _, _, quality = model.eval().encode_memory(torch.randn(1, 3, 64, 64),
                                                   torch.rand(1, 2, 64, 64))
        f16, _, _ = model.rgb_encoder(torch.randn(1, 3, 64, 64))
    assert torch.equal(quality, torch.ones(1, 2))  # every candidate frame is memorised
    assert 1e-3 < float(f16.abs().mean()) < 1e3  # He init: no vanishing (denormal) features


def test_speed_refuses_unknown_variant(engine, tmp_path: Path, capsys) -> None:
    _, graphs = engine
    assert speed.main(["--engine-dir", str(graphs), "--variants", "tensorflow",
                       "--out", str(tmp_path), *clip_args()]) == 1
    assert "unknown variant" in capsys.readouterr().err


def test_aspect_fit_outputs(engine, tmp_path: Path, capsys) -> None:
    from benchmarks import aspect_fit

    _, graphs = engine
    out = tmp_path / "out"
    rc = aspect_fit.main(["--engine-dir", str(graphs), "--data", str(demo_root()),
                          "--sequences", ONE, "--aspects", "9:16", "--threads", "1",
                          "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "aspect_fit.json").read_text())
    assert [(r["aspect"], r["fit"]) for r in data["summary"]] == [("9:16", "letterbox"),
                                                                  ("9:16", "stretch")]
    assert all(0 <= r["jf"] <= 1 for r in data["summary"])
    assert data["per_sequence"][0]["crop"][1] - data["per_sequence"][0]["crop"][0] == 480
    assert aspect_fit.main(["--engine-dir", str(graphs), "--data", str(demo_root()),
                            "--aspects", "9x16", "--out", str(out)]) == 1
    assert "expected W:H" in capsys.readouterr().err

