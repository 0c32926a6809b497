"""The TensorRT backend's bookkeeping on CPU, with stand-ins for `tensorrt` and `pycuda`.

No GPU here, so fake modules implement the calls the backend makes: a flat "device memory"
of numpy byte arrays addressed by integers (so slot offsets, D2D copies and bindings by
address are really exercised) and engines that run the ONNX graph with onnxruntime on the
bound addresses. The real thing needs a GPU (marked `gpu` elsewhere); this checks that the
backend binds every tensor, writes bank slots at the right offsets and reads back the right
bytes, by comparing with ORT CPU on real frames.
"""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import runtime_support as rs
from conftest import ONE

from runtime.backends import resolve_auto
from runtime.core.config import RuntimeConfig
from runtime.core.manifest import Manifest, file_sha256
from runtime.media.masks import read_mask
from runtime.media.sources import read_frame
from runtime.segmenter import Segmenter


class FakeMemory:
    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.next = 1 << 20

    def alloc(self, nbytes: int) -> int:
        addr = self.next
        self.blocks[addr] = np.full(nbytes, 0xAB, np.uint8)  # uninitialised-looking
        self.next += (nbytes + 255) // 256 * 256 + 256  # 256-byte aligned, with a gap
        return addr

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        ptr = int(ptr)
        for base, buf in self.blocks.items():
            if base <= ptr < base + buf.size:
                assert ptr - base + nbytes <= buf.size, "access past the end of an allocation"
                return buf[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"address {ptr:#x} is not allocated")


def fake_modules(mem: FakeMemory) -> dict[str, types.ModuleType]:
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.ptr = mem.alloc(nbytes)

        def __int__(self):
            return self.ptr

        def free(self):
            mem.blocks.pop(self.ptr)

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    class Context:
        depth = 0

        def push(self):
            Context.depth += 1

        @staticmethod
        def pop():
            assert Context.depth > 0
            Context.depth -= 1

        def detach(self):
            pass

    class Device:
        def __init__(self, i):
            self.i = i

        @staticmethod
        def count():
            return 1

        def retain_primary_context(self):
            return Context()

        def compute_capability(self):
            return (9, 0)

        def name(self):
            return "Fake GPU"

    def active():
        assert Context.depth > 0, "CUDA call without a current context"

    def host_bytes(a):
        return np.ascontiguousarray(a).reshape(-1).view(np.uint8)

    def htod(dst, src, stream=None):
        active()
        b = host_bytes(src)
        mem.view(dst, b.size)[:] = b

    def dtoh(dst, src, stream=None):
        active()
        b = dst.reshape(-1).view(np.uint8)
        b[:] = mem.view(src, b.size)

    def dtod(dst, src, size, stream=None):
        active()
        mem.view(dst, size)[:] = mem.view(src, size).copy()

    def memset_d8(dst, value, size):
        active()
        mem.view(dst, size)[:] = value

    cuda.Error, cuda.Stream, cuda.Context, cuda.Device = Error, Stream, Context, Device
    cuda.init = lambda: None
    cuda.mem_alloc = lambda n: (active(), DeviceAllocation(n))[1]
    cuda.memcpy_htod_async, cuda.memcpy_htod = htod, htod
    cuda.memcpy_dtoh_async, cuda.memcpy_dtoh = dtoh, dtoh
    cuda.memcpy_dtod_async, cuda.memset_d8 = dtod, memset_d8
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.pagelocked_zeros = lambda shape, dtype: np.zeros(shape, dtype)

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.16.1.11"

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Engine:
        def __init__(self, onnx_bytes):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            types_ = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}
            self.io = {a.name: (tuple(a.shape), types_[a.type], TensorIOMode.INPUT)
                       for a in self.sess.get_inputs()}
            self.io.update({a.name: (tuple(a.shape), types_[a.type], TensorIOMode.OUTPUT)
                            for a in self.sess.get_outputs()})
            self.num_io_tensors = len(self.io)

        def get_tensor_name(self, i):
            return list(self.io)[i]

        def get_tensor_shape(self, n):
            return self.io[n][0]

        def get_tensor_dtype(self, n):
            return self.io[n][1]

        def get_tensor_mode(self, n):
            return self.io[n][2]

        def create_execution_context(self):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.addr = engine, {}

        def set_tensor_address(self, name, ptr):
            assert int(ptr) % 256 == 0, "TensorRT needs 256-byte aligned addresses"
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            active()
            assert set(self.addr) == set(self.engine.io), "unbound tensors"
            feeds = {}
            for n, (shape, dt, mode) in self.engine.io.items():
                if mode == TensorIOMode.INPUT:
                    nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
                    feeds[n] = mem.view(self.addr[n], nbytes).view(dt).reshape(shape).copy()
            outs = self.engine.sess.run(None, feeds)
            for a, value in zip(self.engine.sess.get_outputs(), outs):
                b = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                mem.view(self.addr[a.name], b.size)[:] = b
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(plan) if plan[:4] != b"BAD!" else None

    trt.TensorIOMode, trt.Logger, trt.Runtime = TensorIOMode, Logger, Runtime
    trt.nptype = lambda dt: dt

    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    mods = {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}
    for name, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return mods


@pytest.fixture
def trt_engine_dir(request, tmp_path, monkeypatch) -> Path:
    """The test graphs with '.engine' files (ONNX bytes the fake TensorRT runs)."""
    _, graphs = rs.cached_engine(request)
    d = tmp_path / "engines"
    shutil.copytree(graphs, d)
    m = json.loads((d / "manifest.json").read_text())
    for name, g in m["graphs"].items():
        shutil.copy(d / g["file"], d / f"{name}.engine")
        g["engine"] = f"{name}.engine"
        g["engine_sha256"] = file_sha256(d / g["engine"])
    m["tensorrt"] = {"version": "10.16.1.11", "gpu_name": "Fake GPU", "compute_capability": "9.0"}
    (d / "manifest.json").write_text(json.dumps(m))
    for name, mod in fake_modules(FakeMemory()).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return d


def test_trt_backend_matches_ort_cpu(trt_engine_dir):
    paths, mask_path = rs.davis_clip(ONE, 7)
    frames, mask = [read_frame(p) for p in paths], read_mask(mask_path)
    assert resolve_auto(Manifest.load(trt_engine_dir), trt_engine_dir) == "trt"
    cfg = RuntimeConfig(memory_size=2, mem_every=1, quality_threshold=0.0)
    runs = {}
    for name in ("trt", "ort-cpu"):
        seg = Segmenter(trt_engine_dir, name, cfg)
        assert seg.backend.name == name
        labels, records = [], []
        for lab in seg.segment(frames, mask, finite=True):
            labels.append(lab)
            records.append(seg.last_record)
        runs[name] = (labels, [r.decision for r in records], seg)
    (la, da, trt_seg), (lb, db, ort_seg) = runs["trt"], runs["ort-cpu"]
    # ORT's bank permutes physical slots: summation order, hence last-bit rounding, differs.
    assert min(rs.iou(a, b) for a, b in zip(la, lb)) > 0.999
    assert [d and d["slot"] for d in da] == [d and d["slot"] for d in db]
    assert sum(1 for d in da if d and d["evicted"]) >= 2
    valid = trt_seg.backend.bank.valid
    assert valid.tolist() == ort_seg.backend.bank.valid.tolist()
    for slot in np.flatnonzero(valid):
        for x, y in zip(trt_seg.backend.bank.read(int(slot)), ort_seg.backend.bank.read(int(slot))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    trt_seg.close()
    trt_seg.close()  # idempotent


def test_trt_refusals(trt_engine_dir):
    from runtime.core.errors import EngineMismatchError

    m = json.loads((trt_engine_dir / "manifest.json").read_text())
    m["tensorrt"]["compute_capability"] = "8.6"
    (trt_engine_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineMismatchError, match="compute capability"):
        Segmenter(trt_engine_dir, "trt")
    m["tensorrt"]["compute_capability"] = "9.0"
    (trt_engine_dir / "manifest.json").write_text(json.dumps(m))
    engine = trt_engine_dir / "qam.engine"
    engine.write_bytes(b"BAD!")
    with pytest.raises(EngineMismatchError, match="qam.engine is corrupted or was changed"):
        Segmenter(trt_engine_dir, "trt")

    def record_sha() -> None:  # as if the manifest had been written for this file
        m["graphs"]["qam"]["engine_sha256"] = file_sha256(engine)
        (trt_engine_dir / "manifest.json").write_text(json.dumps(m))

    record_sha()
    with pytest.raises(EngineMismatchError, match="cannot deserialize"):
        Segmenter(trt_engine_dir, "trt")
    shutil.copy(trt_engine_dir / "encoder.onnx", engine)
    record_sha()
    with pytest.raises(EngineMismatchError, match="I/O tensors"):
        Segmenter(trt_engine_dir, "trt")


def test_auto_falls_back_when_tensorrt_cannot_start(trt_engine_dir, monkeypatch):
    monkeypatch.setattr(sys.modules["pycuda.driver"].Device, "count", staticmethod(lambda: 0))
    with pytest.warns(UserWarning, match="auto: trt cannot run here"):
        seg = Segmenter(trt_engine_dir, "auto")
    # The next choice on this machine: OpenVINO bf16 where available, else ORT CPU.
    from runtime.backends import auto_candidates

    assert seg.backend.name == auto_candidates(seg.manifest, trt_engine_dir)[1]
    from runtime.core.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="no CUDA device 0"):
        Segmenter(trt_engine_dir, "trt")
