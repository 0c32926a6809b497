"""TensorRT checks that run without TensorRT: the static graph checker on graphs that break
each rule, the op table against its source, the engine-compatibility rules, and
build_engines.py's use of the TensorRT API against a recording fake of it."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.trt_check import TrtCheckError, assert_compatible, check_model, errors_of
from export.trt_ops import OPS
from runtime.backends.trt_compat import EngineCompatError, check_engine_compat

REPO = Path(__file__).resolve().parents[1]
OPS_MD = REPO / "docs" / "spec" / "tensorrt-onnx-ops.md"
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def messages(m: onnx.ModelProto) -> str:
    return " | ".join(str(i) for i in errors_of(check_model(m)))


def topk_model(k=4, axis=1, shape=(2, 64), k_const=True, sorted_=1):
    inputs = [vi("x", list(shape))]
    inits = [const("k", [k], np.int64)] if k_const else []
    if not k_const:
        inputs.append(vi("k", [1], I64))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, sorted=sorted_)
    return model([node], inputs, [vi("v", None), vi("i", None, I64)], inits)


def test_clean_graph_passes():
    assert_compatible(topk_model())


@pytest.mark.parametrize("m, expect", [
    (topk_model(k_const=False), "computed at run time"),
    (topk_model(k=4000, shape=(2, 5000)), "3840"),
    (topk_model(k=100, shape=(2, 64)), "axis length"),
    (topk_model(sorted_=0), "sorted"),
    (topk_model(axis=0, shape=(70, 2, 2, 2, 2)), "last 4 dims"),
])
def test_topk_rules(m, expect):
    assert expect in messages(m)


def test_dynamic_dims_and_shape_arithmetic():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    m = model(nodes, [vi("x", ["batch", 8])], [vi("y", ["batch", 8])])
    msg = messages(m)
    assert "dynamic" in msg and "shape computation" in msg and "computed at run time" in msg


def test_shape_arithmetic_output():
    m = model([helper.make_node("Shape", ["x"], ["s"]),
               helper.make_node("Mul", ["s", "two"], ["y"])], [vi("x", [2, 8])],
              [vi("y", [2], I64)], [const("two", [2], np.int64)])
    assert "computed from shapes or constants only" in messages(m)


def test_unsupported_and_custom_ops():
    m = model([helper.make_node("Unique", ["x"], ["y"]),
               helper.make_node("Foo", ["x"], ["z"], domain="my.ops")],
              [vi("x", [4])], [vi("y", None), vi("z", None)])
    m.opset_import.append(helper.make_opsetid("my.ops", 1))
    msg = messages(m)
    assert "(Unique): unsupported" in msg and "custom domain" in msg


def test_uint8_must_be_cast_first():
    m = model([helper.make_node("Transpose", ["img"], ["t"], perm=[0, 3, 1, 2]),
               helper.make_node("Cast", ["t"], ["y"], to=F)],
              [vi("img", [1, 4, 4, 3], TensorProto.UINT8)], [vi("y", [1, 3, 4, 4])])
    msg = messages(m)
    assert "must be Cast before use" in msg and "UINT8 tensor t inside the graph" in msg


def test_scatter_into_graph_input():
    node = helper.make_node("ScatterND", ["data", "idx", "upd"], ["y"])
    m = model([node], [vi("data", [4, 2]), vi("upd", [1, 2])], [vi("y", [4, 2])],
              [const("idx", [[1]], np.int64)])
    assert "scatters into graph input data" in messages(m)


def test_qdq_rules():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)]
    m = model(nodes, [vi("x", [1, 2, 4])], [vi("y", [1, 2, 4])],
              [const("s", [0.1, -0.1]), const("zp", [0, 3], np.int8)])
    msg = messages(m)
    assert "positive" in msg and "symmetric" in msg and "per-channel scales on an activation" in msg


def test_resize_and_reduce_rules():
    nodes = [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", antialias=1),
             helper.make_node("ReduceSum", ["y", "axes"], ["z"])]
    m = model(nodes, [vi("x", [1, 2, 4, 4, 4]), vi("axes", [1], I64)], [vi("z", None)],
              [const("sc", [2, 1, 1, 1, 1])])
    msg = messages(m)
    assert "antialias" in msg and "innermost 3" in msg and "computed at run time" in msg


def test_inf_constant_and_fp16_saturation():
    m = model([helper.make_node("Add", ["x", "c"], ["y"])], [vi("x", [2])], [vi("y", [2])],
              [const("c", [0.0, -np.inf])])
    assert "inf/NaN" in messages(m)
    h = model([helper.make_node("Add", ["x", "c"], ["y"])], [vi("x", [2], TensorProto.FLOAT16)],
              [vi("y", [2], TensorProto.FLOAT16)], [const("c", [0, -65504], np.float16)])
    assert any("saturates" in str(i) for i in check_model(h))


def test_assert_compatible_raises():
    with pytest.raises(TrtCheckError, match="TopK"):
        assert_compatible(topk_model(k_const=False))


def test_op_table_matches_source():
    text = OPS_MD.read_text().split("## Operator support matrix")[1].split("## Additional")[0]
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| operator"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = (cells[1] == "Y", tuple(t.strip() for t in cells[2].split(",")
                                                      if t.strip()))
    assert {op: (s.supported, s.types) for op, s in OPS.items()} == rows


# --- runtime/backends/trt_compat.py ---

BUILT = {"version": "10.16.1.11", "gpu_name": "NVIDIA H100 80GB HBM3",
         "compute_capability": "9.0", "hardware_compatibility_level": "NONE",
         "version_compatible": False}


def test_compat_same_machine():
    assert check_engine_compat(BUILT, "10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0") == []


@pytest.mark.parametrize("trt, gpu, cc, match", [
    ("10.15.1.29", "NVIDIA H100 80GB HBM3", "9.0", "TensorRT 10.16.1.11, this is"),
    ("10.16.1.11", "NVIDIA A100-SXM4-80GB", "8.0", "compute capability 9.0"),
])
def test_compat_refuses(trt, gpu, cc, match):
    with pytest.raises(EngineCompatError, match=match):
        check_engine_compat(BUILT, trt, gpu, cc)


def test_compat_warnings_and_levels():
    assert check_engine_compat(BUILT, "10.16.1.12", "NVIDIA H100 PCIe", "9.0")  # two warnings
    ampere = {**BUILT, "hardware_compatibility_level": "AMPERE_PLUS"}
    assert check_engine_compat(ampere, "10.16.1.11", "NVIDIA A100", "8.0")
    vc = {**BUILT, "version_compatible": True}
    check_engine_compat(vc, "10.17.0.1", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(EngineCompatError):
        check_engine_compat(vc, "10.15.0.1", "NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(EngineCompatError, match="no TensorRT build"):
        check_engine_compat(None, "10.16.1.11", "x", "9.0")


# --- export/build_engines.py against a recording fake of the TensorRT 10 API ---

class _Fake:
    """Just the TensorRT 10 Python surface build_engines.py uses (docs/spec/tensorrt-api-notes.md)."""

    def __init__(self):
        self.calls: list[tuple] = []
        fake = self

        class Dims(tuple):
            pass

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, Dims(shape)

        class Network:
            def __init__(self, flags):
                fake.calls.append(("create_network", flags))
                self.inputs, self.outputs = [], []
                self.num_inputs = self.num_outputs = 0

            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                g = onnx.load(path, load_external_data=False).graph

                def dims(v):
                    return [d.dim_value for d in v.type.tensor_type.shape.dim]

                self.network.inputs = [Tensor(v.name, dims(v)) for v in g.input]
                self.network.outputs = [Tensor(v.name, dims(v)) for v in g.output]
                self.network.num_inputs = len(g.input)
                self.network.num_outputs = len(g.output)
                fake.calls.append(("parse", Path(path).name))
                return True

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                fake.calls.append(("profile", name, tuple(mn), tuple(opt), tuple(mx)))

        class Cache:
            def serialize(self):
                return b"cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def create_timing_cache(self, data):
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def add_optimization_profile(self, p):
                return 0

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"plan-" + network.inputs[0].name.encode()

        class Logger:
            WARNING, INFO = 2, 3

            def __init__(self, level):
                pass

        self.module = types.SimpleNamespace(
            __version__="10.16.1.11", Logger=Logger, Builder=Builder, OnnxParser=OnnxParser,
            Dims=Dims,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    import torch

    from export.to_onnx import export_checkpoint
    from training.checkpoint import save_weights
    from training.config import ModelConfig
    from training.model import QDMN

    torch.manual_seed(0)
    cfg = ModelConfig.light()
    d = tmp_path_factory.mktemp("trt")
    save_weights(QDMN(cfg), d / "m.pth", {"config": {"model": cfg.to_dict()}})
    export_checkpoint(d / "m.pth", d / "graphs", size=(64, 112), max_objects=2, memory_size=2)
    return d / "graphs"


def test_build_engines_with_fake_tensorrt(exported, tmp_path, monkeypatch):
    import hashlib
    import shutil

    from export import build_engines
    from runtime.core.manifest import Manifest

    d = tmp_path / "graphs"
    shutil.copytree(exported, d)
    fake = _Fake()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(build_engines, "gpu_info", lambda device=0: ("NVIDIA H100", "9.0"))
    m = build_engines.build_engines(d, workspace_gb=2)
    assert m.tensorrt["version"] == "10.16.1.11" and m.tensorrt["strongly_typed"]
    assert m.tensorrt["compute_capability"] == "9.0" and m.tensorrt["builder_flags"] == []
    assert Manifest.load(d).graphs["decoder"].engine == "decoder.engine"
    assert (d / "encoder.engine").read_bytes() == b"plan-image"
    assert Manifest.load(d).graphs["encoder"].engine_sha256 == hashlib.sha256(
        b"plan-image").hexdigest()
    assert (d / "timing.cache").read_bytes() == b"cache"
    assert ("create_network", 1 << 1) in fake.calls  # STRONGLY_TYPED
    assert ("pool", "WORKSPACE", 2 << 30) in fake.calls
    assert ("profile", "mem_valid", (4,), (4,), (4,)) in fake.calls
    assert not [c for c in fake.calls if c[0] == "flag"]
    check_engine_compat(m.tensorrt, "10.16.1.11", "NVIDIA H100", "9.0")
    # weakly typed with the legacy precision flag
    m = build_engines.build_engines(d, fp16=True)
    assert ("flag", "FP16") in fake.calls and m.tensorrt["builder_flags"] == ["FP16"]
    with pytest.raises(build_engines.BuildError, match="Q/DQ export"):
        build_engines.build_engines(d, int8=True)


def test_build_engines_without_tensorrt(exported):
    code = ("import sys; sys.modules['tensorrt'] = None; sys.argv = ['b', sys.argv[1]]; "
            "import runpy; runpy.run_path('export/build_engines.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(exported)], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert 'pip install ".[trt]"' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert json.loads((exported / "manifest.json").read_text())["tensorrt"] is None


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_build_engines_workspace_range(exported, value, capsys):
    from export import build_engines

    with pytest.raises(SystemExit) as e:
        build_engines.main([str(exported), "--workspace", value])
    assert e.value.code == 2 and "--workspace" in capsys.readouterr().err
