"""Export parity on real DAVIS frames: each ONNX graph (ONNX Runtime CPU) against the PyTorch
function it was traced from, the memory mask, precisions, the manifest and the error paths.

A random-init light model at 64x112 (h x w = 4 x 7), 2 objects, 3 dynamic memory slots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import runtime_support as rs
import torch
from conftest import ONE, TWO, script_env

from export.errors import ExportError
from export.to_onnx import convert_fp16, export_checkpoint, export_graph
from export.trt_check import check_model, errors_of
from runtime.backends.ort import session_options
from runtime.core.manifest import GRAPH_NAMES, Manifest, file_sha256
from runtime.media.masks import MaskMode, read_labels
from training.checkpoint import CheckpointError, checkpoint_quality_score, load_model, save_weights
from training.config import ModelConfig
from training.graphs import build_graphs, specs_for
from training.model import QDMN, memory_readout
from training.reference import ReferenceSegmenter

REPO = Path(__file__).resolve().parents[1]
SEQ = ONE
H, W, N, BETA = 64, 112, 2, 3
S = BETA + 2

# Tolerances per output: |ONNX - PyTorch FP32| <= ATOL + RTOL * max|PyTorch output|. FP32 is
# 1e-4 absolute for outputs up to ~10; the encoder's f4/f8 features reach ~70, where ONNX
# Runtime's conv kernels differ from PyTorch's by up to 1e-4 (1.4e-6 relative, a few ulps).
FP32_TOL = (1e-4, 1e-5)
FP16_TOL = (1e-3, 5e-3)  # measured: <= 1.7e-3 relative (encoder), prob <= 8e-4 absolute
INT8_PROB_TOL = 0.15  # decoder prob only; measured ~0.05 (INT8 features: see the report)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Six (1, H, W, 3) uint8 RGB frames."""
    paths = sorted(rs.demo_layout().frames_dir(SEQ).glob("*.jpg"))[:6]
    out = []
    for p in paths:
        bgr = cv2.resize(cv2.imread(str(p)), (W, H), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None])
    return out


@pytest.fixture(scope="module")
def first_masks() -> np.ndarray:
    """(N, H, W): the DAVIS object and, as a second object, the image's lower-left quarter."""
    ann = read_labels(rs.demo_layout().annotation(SEQ, "00000"), MaskMode.GROUND_TRUTH)
    obj = (cv2.resize(ann, (W, H), interpolation=cv2.INTER_NEAREST) > 0).astype(np.float32)
    other = np.zeros_like(obj)
    other[H // 2:, : W // 4] = 1
    return np.stack([obj, other * (1 - obj)])


def make_ckpt(path: Path, cfg: ModelConfig) -> Path:
    """QDMN with ImageNet backbones where the weights package is installed (realistic feature
    magnitudes), the rest random."""
    torch.manual_seed(0)
    try:
        model = QDMN(cfg, pretrained_backbone=True)
    except (RuntimeError, ImportError):
        model = QDMN(cfg)
    save_weights(model, path, {"config": {"model": cfg.to_dict(), "image_size": [H, W]}})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "light.pth", ModelConfig.light())


@pytest.fixture(scope="module")
def torch_graphs(ckpt: Path) -> dict[str, torch.nn.Module]:
    model, _ = load_model(ckpt)
    return build_graphs(model, H, W)


@pytest.fixture(scope="module")
def fp32_dir(ckpt: Path, tmp_path_factory) -> Path:
    """Exported through the CLI, run as a script from the repo root (as users run it)."""
    out = tmp_path_factory.mktemp("export") / "fp32"
    r = subprocess.run([sys.executable, "export/to_onnx.py", str(ckpt), "--out", str(out),
                        "--max-objects", str(N), "--memory-size", str(BETA)],
                       cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == [H, W]  # the checkpoint's image_size
    return out


@pytest.fixture(scope="module")
def fp16_dir(ckpt: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "fp16"
    export_checkpoint(ckpt, out, max_objects=N, memory_size=BETA, precision="fp16")
    return out


@pytest.fixture(scope="module")
def chain_inputs(torch_graphs, frames, first_masks) -> dict[str, dict[str, np.ndarray]]:
    return make_chain_inputs(torch_graphs, frames, first_masks)


def make_chain_inputs(g: dict[str, torch.nn.Module], frames: list[np.ndarray],
                      first_masks: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Realistic inputs for each graph from the PyTorch chain: frame 0 + masks into memory
    (slot 0), frame 1 into the temporary slot, frame 2 queried; the other slots hold garbage
    and are invalid."""
    t = torch.from_numpy
    with torch.no_grad():
        (k0, v0, _), (k1, v1, features) = (
            bank_slot(g["qam"](t(frames[i]), t(first_masks))) for i in (0, 1))
        gen = torch.Generator().manual_seed(0)
        keys = torch.randn((N, S, *k0.shape[1:]), generator=gen) * 50
        values = torch.randn((N, S, *v0.shape[1:]), generator=gen) * 50
        keys[:, 0], values[:, 0], keys[:, S - 1], values[:, S - 1] = k0, v0, k1, v1
        valid = torch.zeros(S)
        valid[[0, S - 1]] = 1
        qk, qv, f8, f4 = g["encoder"](t(frames[2]), t(first_masks))
        readout = g["memory_read"](qk, keys, values, valid)
    inputs = {
        "encoder": {"image": frames[2], "prev_prob": first_masks},
        "qam": {"image": frames[3], "masks": first_masks},
        "quality": {"quality_features": features},
        "memory_read": {"query_key": qk, "mem_keys": keys, "mem_values": values,
                        "mem_valid": valid},
        "decoder": {"readout": readout, "query_value": qv, "f8": f8, "f4": f4,
                    "object_valid": torch.tensor([1.0, 0.0])},
    }
    return {name: {k: np.ascontiguousarray(v.numpy() if torch.is_tensor(v) else v)
                   for k, v in feed.items()} for name, feed in inputs.items()}


def bank_slot(qam_out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """qam's outputs -> the slot's keys (N, P, CK), values (N, P, CV), quality features."""
    *chunks, features = qam_out
    n = len(chunks) // 2
    return torch.stack(chunks[:n]), torch.stack(chunks[n:]), features


def model_layout(bank: np.ndarray) -> torch.Tensor:
    """Bank (N, T, P, C) -> memory_readout's (1, T, N, C, h, w)."""
    n, t, _, c = bank.shape
    return torch.from_numpy(bank).permute(1, 0, 3, 2).reshape(1, t, n, c, H // 16, W // 16)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])


def reference(torch_graphs, name: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = torch_graphs[name](*(torch.from_numpy(v) for v in feed.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def max_diffs(export_dir: Path, torch_graphs, chain_inputs, tol: tuple[float, float]
              ) -> dict[str, float]:
    """Per graph: max |ONNX - PyTorch| and the worst ratio to the tolerance over its outputs."""
    diffs, ratios, scales = {}, {}, {}
    for name in GRAPH_NAMES:
        feed = chain_inputs[name]
        got = session(export_dir / f"{name}.onnx").run(None, feed)
        want = reference(torch_graphs, name, feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        d = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
        sc = [float(np.abs(w).max()) for w in want]
        diffs[name], scales[name] = max(d), max(sc)
        ratios[name] = max(x / (tol[0] + tol[1] * y) for x, y in zip(d, sc))
    print(f"\n{export_dir.name}: max abs diff {diffs}\n  max abs output {scales}")
    return {"diff": diffs, "ratio": ratios}


def test_fp32_parity(fp32_dir, torch_graphs, chain_inputs):
    r = max_diffs(fp32_dir, torch_graphs, chain_inputs, FP32_TOL)
    assert all(x <= 1 for x in r["ratio"].values()), r


def test_lite2_fp32_parity(frames, first_masks, tmp_path):
    """The larger backbone option (other f16/f8 widths) exports with the same parity."""
    cfg = dataclasses.replace(ModelConfig.light(), backbone="efficientnet_lite2")
    path = make_ckpt(tmp_path / "lite2.pth", cfg)
    export_checkpoint(path, tmp_path / "fp32", max_objects=N, memory_size=BETA)
    graphs = build_graphs(load_model(path)[0], H, W)
    inputs = make_chain_inputs(graphs, frames, first_masks)
    assert inputs["decoder"]["f8"].shape[1] == 48  # Lite2's width, not Lite0's 40
    r = max_diffs(tmp_path / "fp32", graphs, inputs, FP32_TOL)
    assert all(x <= 1 for x in r["ratio"].values()), r


def test_fp16_parity(fp16_dir, torch_graphs, chain_inputs):
    r = max_diffs(fp16_dir, torch_graphs, chain_inputs, FP16_TOL)
    assert all(x <= 1 for x in r["ratio"].values()), r
    # FP16 compute, FP32 I/O
    for name in GRAPH_NAMES:
        m = onnx.load(str(fp16_dir / f"{name}.onnx"))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer) or \
            name == "memory_read"
        for v in (*m.graph.input, *m.graph.output):
            assert v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT,
                                                    onnx.TensorProto.UINT8)


@pytest.mark.parametrize("valid_slots", [[0], [0, 2], [0, 2, S - 1]])
def test_memory_read_masks_invalid_slots(fp32_dir, torch_graphs, chain_inputs, valid_slots):
    """Garbage in invalid slots changes nothing: the graph equals the PyTorch read over only
    the valid slots (1 slot = 28 positions < top_k: plain softmax; 2+: top-k)."""
    feed = dict(chain_inputs["memory_read"])
    valid = np.zeros((S,), np.float32)
    valid[valid_slots] = 1
    feed["mem_valid"] = valid
    feed["mem_keys"] = feed["mem_keys"].copy()
    # Real keys, scaled per slot: identical slots would tie exactly, and top-k may keep any
    # of the tied positions.
    for i, slot in enumerate(valid_slots):
        feed["mem_keys"][:, slot] = chain_inputs["memory_read"]["mem_keys"][:, 0] * (1 + 0.1 * i)
    (got,) = session(fp32_dir / "memory_read.onnx").run(None, feed)
    mk = model_layout(feed["mem_keys"][:, valid_slots])
    mv = model_layout(feed["mem_values"][:, valid_slots])
    want = memory_readout(torch.from_numpy(feed["query_key"]), mk, mv,
                          torch.ones(1, len(valid_slots)), top_k=50)[0].numpy()
    assert np.abs(got - want).max() <= FP32_TOL[0] + FP32_TOL[1] * np.abs(want).max()


def test_manifest_and_static_graphs(fp32_dir, ckpt):
    m = Manifest.load(fp32_dir)
    cfg = ModelConfig.light()
    assert (m.height, m.width, m.max_objects, m.memory_size) == (H, W, N, BETA)
    assert (m.top_k, m.key_dim, m.value_dim, m.precision) == (cfg.top_k, cfg.key_dim,
                                                               cfg.value_dim, "fp32")
    assert m.mem_every == 5 and m.quality_threshold == 0.8 and m.opset >= 17
    assert m.quality_score == "qam*confidence"  # this project's checkpoint (runtime.core.quality)
    assert m.checkpoint_sha256 == file_sha256(ckpt)
    assert ModelConfig.from_dict(m.model_config) == cfg
    assert m.normalisation["input"] == "uint8 RGB NHWC" and len(m.normalisation["mean"]) == 3
    for spec in m.graphs.values():
        model = onnx.load(str(fp32_dir / spec.file))
        assert model.opset_import[0].version >= 17
        for declared, actual in ((spec.inputs, model.graph.input),
                                 (spec.outputs, model.graph.output)):
            assert [t.name for t in declared] == [v.name for v in actual]
            for t, v in zip(declared, actual):
                dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
                assert all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
                assert tuple(dims) == t.shape
        assert sorted(fp32_dir.iterdir()) == sorted(
            [fp32_dir / "manifest.json", *(fp32_dir / f"{g}.onnx" for g in GRAPH_NAMES)])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_pass_trt_check(fp32_dir, fp16_dir, precision):
    d = fp32_dir if precision == "fp32" else fp16_dir
    for name in GRAPH_NAMES:
        issues = check_model(d / f"{name}.onnx")
        assert not errors_of(issues), [str(i) for i in issues]
        ops = {n.op_type for n in onnx.load(str(d / f"{name}.onnx")).graph.node}
        assert not ops & {"Shape", "ScatterND", "ScatterElements"}


def test_fp16_decoder_finite_when_saturated(ckpt, frames):
    """Confident logits: the soft aggregation's 1 - 1e-7 clamp is 1 in FP16 (log(p/0) = inf),
    which is why the decoder keeps it in FP32."""
    model, _ = load_model(ckpt)
    with torch.no_grad():
        model.decoder.pred.bias.fill_(30.0)
    specs = specs_for(model, H, W, N, BETA)
    fp16 = convert_fp16(export_graph(build_graphs(model, H, W)["decoder"], specs["decoder"]),
                        "decoder")
    gen = np.random.default_rng(0)
    feed = {t.name: gen.random(t.shape, dtype=np.float32) for t in specs["decoder"].inputs}
    feed["object_valid"] = np.ones((N,), np.float32)
    s = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"])
    (prob,) = s.run(None, feed)
    assert np.isfinite(prob).all()
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-3)


def test_int8_export(ckpt, torch_graphs, chain_inputs, tmp_path):
    out = tmp_path / "int8"
    calib = rs.demo_layout().frames_dir(TWO)
    m = export_checkpoint(ckpt, out, max_objects=N, memory_size=BETA, precision="int8",
                          calib_frames=calib)
    assert m.precision == "int8"
    for name in GRAPH_NAMES:
        model = onnx.load(str(out / f"{name}.onnx"))
        assert not errors_of(check_model(model)), name
        qdq = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
        assert (qdq > 0) == (name != "memory_read"), name
    r = max_diffs(out, torch_graphs, chain_inputs, FP32_TOL)
    assert r["ratio"]["memory_read"] <= 1  # not quantised
    assert r["diff"]["decoder"] <= INT8_PROB_TOL


# --- errors: typed in the library, one line + non-zero exit in the CLI, nothing left behind ---

def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_not_a_qdmn_checkpoint(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, bad)
    before = _listing(tmp_path)
    with pytest.raises(CheckpointError, match="not of a QDMN"):
        export_checkpoint(bad, tmp_path / "out")
    assert _listing(tmp_path) == before


def test_missing_keys(ckpt, tmp_path):
    obj = torch.load(ckpt, weights_only=True)
    del obj["model"]["decoder.pred.weight"]
    bad = tmp_path / "missing.pth"
    torch.save(obj, bad)
    before = _listing(tmp_path)
    with pytest.raises(CheckpointError, match="decoder.pred.weight"):
        export_checkpoint(bad, tmp_path / "out")
    assert _listing(tmp_path) == before


def test_size_not_multiple_of_16(ckpt, tmp_path):
    with pytest.raises(ExportError, match="multiples of 16"):
        export_checkpoint(ckpt, tmp_path / "out", size=(60, 112))
    assert _listing(tmp_path) == []


def test_unwritable_output(ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot create the folder of .*Not a directory"):
        export_checkpoint(ckpt, blocker / "sub" / "out")
    assert _listing(tmp_path) == ["file"]


def test_export_into_a_folder_keeps_the_users_files(ckpt, tmp_path):
    """Only what an earlier export wrote (its manifest lists) is replaced; other files stay and
    a file of the user's with an output name is refused (before, the folder was replaced)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    export_checkpoint(ckpt, out, size=(64, 112), max_objects=1, memory_size=1)
    m = json.loads((out / "manifest.json").read_text())
    m["graphs"]["encoder"]["engine"] = "encoder.engine"  # as build_engines.py records it
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "encoder.engine").write_text("stale engine")
    export_checkpoint(ckpt, out, size=(64, 112), max_objects=1, memory_size=1)
    assert _listing(tmp_path) == ["out", *(f"out/{n}" for n in sorted(
        ["decoder.onnx", "encoder.onnx", "manifest.json", "memory_read.onnx", "notes.txt",
         "qam.onnx", "quality.onnx"]))]
    assert (out / "notes.txt").read_text() == "mine"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "encoder.onnx").write_text("my own graph")
    with pytest.raises(ExportError, match="encoder.onnx that no earlier run of this tool wrote"):
        export_checkpoint(ckpt, theirs, size=(64, 112), max_objects=1, memory_size=1)
    assert (theirs / "encoder.onnx").read_text() == "my own graph"
    assert _listing(theirs) == ["encoder.onnx"]


@pytest.mark.parametrize("args, message", [
    (["--size", "60", "112"], "multiples of 16"),
    (["--int8", "--calib", "/nonexistent"], "calibration folder not found"),
    (["--max-objects", "0"], "max_objects must be in 1..254"),
    (["--max-objects", "255"], "max_objects must be in 1..254"),
    (["--memory-size", "0"], "memory_size must be >= 1"),
    (["--opset", "9"], "opset 9 not supported"),
])
def test_cli_errors_one_line(ckpt, tmp_path, args, message):
    r = subprocess.run([sys.executable, "export/to_onnx.py", str(ckpt), "--out",
                        str(tmp_path / "out"), *args], cwd=REPO, env=script_env(),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


class _Payload:
    """A pickle that runs code when loaded without weights_only (it must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoints(d: Path) -> list[tuple[Path, str]]:
    """(file, expected message) for files that are not checkpoints or are unsafe pickles."""
    import pickle

    rand, zipped, plain = d / "random.pth", d / "payload.pth", d / "payload.pkl"
    rand.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    torch.save({"model": _Payload(d / "pwned")}, zipped)
    plain.write_bytes(pickle.dumps(_Payload(d / "pwned"), protocol=4))
    return [(rand, "is not a PyTorch checkpoint"), (zipped, "refused: "),
            (plain, "refused: ")]


def test_cli_bad_checkpoint_files_in_our_words(tmp_path):
    """Random bytes and code-running pickles: one line of ours, never torch's advice to load
    with weights_only=False, and the payload never runs."""
    for path, message in bad_checkpoints(tmp_path):
        r = subprocess.run([sys.executable, "export/to_onnx.py", str(path), "--out",
                            str(tmp_path / "out")], cwd=REPO, env=script_env(),
                           capture_output=True, text=True, timeout=120, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: ") and message in lines[0], lines
        assert "weights_only" not in r.stderr
        if message == "refused: ":
            assert "posix.system" in lines[0] or "nt.system" in lines[0]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_cli_missing_keys_one_line(ckpt, tmp_path):
    obj = torch.load(ckpt, weights_only=True)
    for k in [k for k in obj["model"] if k.startswith("score.")]:
        del obj["model"][k]
    bad = tmp_path / "missing.pth"
    torch.save(obj, bad)
    r = subprocess.run([sys.executable, "-m", "export.to_onnx", str(bad), "--out",
                        str(tmp_path / "out")], cwd=REPO, env=script_env(),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "missing keys" in r.stderr
    assert _listing(tmp_path) == ["missing.pth"]


# --- official checkpoints (bare ResNet-50 state dict, names from the official code) ---

OFFICIAL_KEYS = REPO / "docs" / "spec" / "official-qdmn-state-dict.json"


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory) -> Path:
    """A bare state dict with the official names/shapes (zeros: only loading is tested)."""
    keys = json.loads(OFFICIAL_KEYS.read_text())["keys"]
    state = {k: torch.zeros(shape, dtype=torch.long if k.endswith("num_batches_tracked")
                            else torch.float32) for k, shape in keys.items()}
    path = tmp_path_factory.mktemp("official") / "ckpt.pth"
    torch.save(state, path)
    return path


def test_official_state_dict_loads_and_declares_graphs(official_ckpt, tmp_path):
    """The full ResNet-50 export takes ~25 s and 3.3 GB peak here (the slow test below); the
    memory_read graph depends only on the dims, so it is exported for real."""
    model, meta = load_model(official_ckpt)
    assert meta["official"] and model.cfg.backbone == "resnet50"
    # the paper's gate for the paper's weights, exported and in the reference alike
    assert checkpoint_quality_score(meta) == "qam"
    assert ReferenceSegmenter.from_checkpoint(official_ckpt).config.quality_score == "qam"
    specs = specs_for(model, 64, 64, 1, 1)
    assert specs["memory_read"].input("mem_values").shape == (1, 3, 16, 512)
    assert specs["encoder"].output("f8").shape == (1, 512, 8, 8)
    graph = export_graph(build_graphs(model, 64, 64)["memory_read"], specs["memory_read"])
    assert not errors_of(check_model(graph))


@pytest.mark.slow
def test_official_export_tiny(official_ckpt, tmp_path):
    m = export_checkpoint(official_ckpt, tmp_path / "out", size=(64, 64), max_objects=1,
                          memory_size=1)
    assert m.model_config["backbone"] == "resnet50" and m.value_dim == 512
    assert m.quality_score == "qam"
    for name in GRAPH_NAMES:
        assert not errors_of(check_model(tmp_path / "out" / f"{name}.onnx"))


def test_failure_midway_leaves_nothing(ckpt, tmp_path, monkeypatch):
    """Parents the export had to create are removed too when it fails after starting."""
    from export import to_onnx

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(to_onnx, "_export_into", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_checkpoint(ckpt, tmp_path / "new" / "deeper" / "out")
    assert _listing(tmp_path) == []
