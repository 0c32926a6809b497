"""TensorRT backend: serialized static-shape engines, pycuda device buffers bound once.

Every tensor name gets one device allocation, bound with `set_tensor_address` to every engine
that uses it (so encoder outputs are memory_read/decoder inputs without copies); host-facing
tensors also get a pinned host buffer. One non-default stream; `run` enqueues H2D copies,
`execute_async_v3`, D2H copies and synchronises (per-stage timings stay honest). Bank writes
are D2D copies of qam's per-object outputs into their chunks of the slot (the manifest's bank
layout). The CUDA context is the device's
primary context, pushed only while this backend works (no pycuda.autoinit).

TensorRT is imported where it is used (it is optional), under its own name, so that mypy checks
every call against the TensorRT stubs (tests/test_typecheck.py); pycuda has no stubs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends.base import BANK_TENSORS, Backend, Bank
from runtime.backends.trt_compat import check_engine_compat
from runtime.core.errors import BackendUnavailableError, EngineMismatchError, QDMNRuntimeError
from runtime.core.manifest import GRAPH_NAMES, Manifest, ManifestError, verify_sha256

if TYPE_CHECKING:
    import tensorrt as trt

# Tensors that cross between host and device (the rest stay on the device).
HOST_TENSORS = ("image", "prev_prob", "masks", "object_valid", "prob", "quality")


class TrtBank(Bank):
    """keys/values/valid as device allocations; slot writes are D2D copies on the stream."""

    def __init__(self, manifest: Manifest, cuda: Any, stream: Any, src: Mapping[str, Any],
                 active: Any):
        super().__init__(manifest)
        self._active = active  # pushes the backend's CUDA context
        spec = manifest.graphs["memory_read"]
        self._cuda, self._stream, self._src = cuda, stream, src
        self.shapes = {t: spec.input(t).shape for t in ("mem_keys", "mem_values")}
        self.tensors: dict[str, Any] = {}
        for t, shape in self.shapes.items():
            size = int(np.prod(shape)) * 4
            self.tensors[t] = cuda.mem_alloc(size)
            cuda.memset_d8(self.tensors[t], 0, size)
        self.valid_dev = cuda.mem_alloc(4 * self.capacity)
        self._valid_host = cuda.pagelocked_empty(self.capacity, np.float32)
        self._dirty = True

    def _store(self, slot: int) -> None:
        c, s = self._cuda, self._stream
        with self._active():
            for name, tensor, obj in self.writes:
                offset, count = self.manifest.bank_chunk(tensor, obj, slot)
                c.memcpy_dtod_async(int(self.tensors[tensor]) + 4 * offset, self._src[name],
                                    4 * count, s)

    def _valid_changed(self) -> None:
        self._dirty = True

    def upload_valid(self) -> None:
        """Called inside the backend's run (context active, before memory_read)."""
        if self._dirty:
            self._stream.synchronize()  # the pinned buffer may still feed an earlier copy
            self._valid_host[:] = self._valid
            self._cuda.memcpy_htod_async(self.valid_dev, self._valid_host, self._stream)
            self._dirty = False

    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(slot)
        out = []
        with self._active():
            self._stream.synchronize()
            for tensor, (n, _, p, ch) in self.shapes.items():
                a = np.empty((n, p, ch), np.float32)
                for obj in range(n):
                    offset, _ = self.manifest.bank_chunk(tensor, obj, slot)
                    self._cuda.memcpy_dtoh(a[obj], int(self.tensors[tensor]) + 4 * offset)
                out.append(a)
        return out[0], out[1]

    def free(self) -> None:
        for a in (*self.tensors.values(), self.valid_dev):
            a.free()


class TrtBackend(Backend):
    name = "trt"
    bank: TrtBank

    def __init__(self, manifest: Manifest, engine_dir: str | Path, *, device_id: int = 0):
        super().__init__(manifest)
        engine_dir = Path(engine_dir)
        engines = {g: engine_dir / e for g in GRAPH_NAMES if (e := manifest.graphs[g].engine)}
        missing = [g for g in GRAPH_NAMES if g not in engines or not engines[g].is_file()]
        if missing:
            raise BackendUnavailableError(
                f"trt: {engine_dir} has no TensorRT engine for {missing}: build the engines on "
                "this GPU first, or use --backend ort-cuda / ort-cpu")
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailableError(f"trt: TensorRT and pycuda are required ({e}); "
                                          "pip install 'tensorrt>=10,<11' pycuda") from None
        self._cuda = cuda
        self.trt_version: str = trt.__version__
        try:
            cuda.init()
            if device_id >= cuda.Device.count():
                raise BackendUnavailableError(f"trt: no CUDA device {device_id} "
                                              f"({cuda.Device.count()} found)")
            dev = cuda.Device(device_id)
            major, minor = dev.compute_capability()
            for message in check_engine_compat(manifest.tensorrt, trt.__version__, dev.name(),
                                               f"{major}.{minor}"):
                warnings.warn(f"trt: {message}", stacklevel=2)
            self._ctx = dev.retain_primary_context()
        except cuda.Error as e:
            raise BackendUnavailableError(f"trt: CUDA is not usable here: {e}") from None
        self.device_id = device_id
        self._closed = False
        self._dev: dict[str, Any] = {}
        self._host: dict[str, np.ndarray] = {}
        with self._active():
            self._stream = cuda.Stream()
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engines: dict[str, trt.ICudaEngine] = {
                g: self._load(g, engines[g]) for g in GRAPH_NAMES}
            for name, spec in self.specs.items():
                if name in BANK_TENSORS:
                    continue
                self._dev[name] = cuda.mem_alloc(max(1, int(np.prod(spec.shape))) *
                                                 np.dtype(spec.dtype).itemsize)
                if name in HOST_TENSORS:
                    self._host[name] = cuda.pagelocked_zeros(spec.shape, np.dtype(spec.dtype))
            for name in ("prev_prob", "object_valid"):  # read before anything writes them
                cuda.memcpy_htod(self._dev[name], self._host[name])
            self.bank = TrtBank(manifest, cuda, self._stream, self._dev, self._active)
            bank_ptrs = {**self.bank.tensors, "mem_valid": self.bank.valid_dev}
            self._contexts: dict[str, trt.IExecutionContext] = {}
            for g, engine in self._engines.items():
                ctx = engine.create_execution_context()
                for t in (*manifest.graphs[g].inputs, *manifest.graphs[g].outputs):
                    ptr = bank_ptrs[t.name] if t.name in bank_ptrs else self._dev[t.name]
                    if not ctx.set_tensor_address(t.name, int(ptr)):
                        raise EngineMismatchError(f"trt: cannot bind {g}.{t.name}")
                self._contexts[g] = ctx

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self, graph: str, path: Path) -> trt.ICudaEngine:
        import tensorrt as trt

        plan = path.read_bytes()
        try:
            verify_sha256(path, self.manifest.graphs[graph].engine_sha256, plan)
        except ManifestError as e:
            raise EngineMismatchError(str(e)) from None
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineMismatchError(f"trt: cannot deserialize {path}: built with another "
                                      "TensorRT version or for another GPU? Rebuild it here")
        spec = self.manifest.graphs[graph]
        want = {t.name: (t, trt.TensorIOMode.INPUT) for t in spec.inputs}
        want.update({t.name: (t, trt.TensorIOMode.OUTPUT) for t in spec.outputs})
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted(want):
            raise EngineMismatchError(f"{path}: I/O tensors {sorted(names)}, the manifest "
                                      f"declares {sorted(want)}")
        for n in names:
            t, mode = want[n]
            shape = tuple(engine.get_tensor_shape(n)[:])  # Dims slice like tuples
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            if engine.get_tensor_mode(n) != mode or shape != t.shape or dtype != t.dtype:
                raise EngineMismatchError(f"{path}: {n} is {shape} {dtype}, the manifest says "
                                          f"{t.shape} {t.dtype}")
        return engine

    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        cuda, s = self._cuda, self._stream
        with self._active():
            for name, array in (feeds or {}).items():
                if name not in self._host:
                    raise KeyError(f"trt: {name!r} is not a host-fed tensor")
                np.copyto(self._host[name], self._check_feed(name, array))
                cuda.memcpy_htod_async(self._dev[name], self._host[name], s)
            if graph == "memory_read":
                self.bank.upload_valid()
            if not self._contexts[graph].execute_async_v3(s.handle):
                raise QDMNRuntimeError(f"trt: enqueueing {graph} failed (see TensorRT's log)")
            out = {}
            for name in fetch:
                spec = self.specs[name]
                if name not in self._host:
                    self._host[name] = cuda.pagelocked_empty(spec.shape, np.dtype(spec.dtype))
                cuda.memcpy_dtoh_async(self._host[name], self._dev[name], s)
            s.synchronize()
            for name in fetch:
                out[name] = self._host[name].copy()
            return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tensorrt": self.trt_version,
                "device_id": self.device_id}

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        with self._active():
            self._stream.synchronize()
            self._contexts.clear()
            self._engines.clear()
            self.bank.free()
            for a in self._dev.values():
                a.free()
            self._dev.clear()
            self._host.clear()
        self._ctx.detach()


__all__ = ["TrtBackend", "TrtBank"]
