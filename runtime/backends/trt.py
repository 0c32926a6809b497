"""TensorRT backend: serialized static-shape engines, pycuda device buffers bound once.

Every tensor name gets one device allocation, bound with `set_tensor_address` to every engine
that uses it (so encoder outputs are memory_read/decoder inputs without copies); host-facing
tensors also get a pinned host buffer. One non-default stream; `run` enqueues H2D copies,
`execute_async_v3`, D2H copies and synchronises (per-stage timings stay honest). Bank writes
are D2D copies of qam's mem_key/mem_value into the slot. The CUDA context is the device's
primary context, pushed only while this backend works (no pycuda.autoinit).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import BANK_TENSORS, Backend, Bank
from runtime.errors import BackendUnavailableError, EngineMismatchError, QDMNRuntimeError
from runtime.manifest import GRAPH_NAMES, Manifest, ManifestError, verify_sha256

# Tensors that cross between host and device (the rest stay on the device).
HOST_TENSORS = ("image", "prev_prob", "masks", "object_valid", "prob", "quality")


def import_trt() -> tuple[Any, Any]:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(f"trt: TensorRT and pycuda are required ({e}); "
                                      "pip install 'tensorrt>=10,<11' pycuda") from None
    return trt, cuda


class TrtBank(Bank):
    """keys/values/valid as device allocations; slot writes are D2D copies on the stream."""

    def __init__(self, manifest: Manifest, cuda: Any, stream: Any, src: Mapping[str, Any],
                 active: Any):
        super().__init__(manifest)
        self._active = active  # pushes the backend's CUDA context
        spec = manifest.graphs["memory_read"]
        self._cuda, self._stream, self._src = cuda, stream, src
        self._kshape = spec.input("mem_keys").shape
        self._vshape = spec.input("mem_values").shape
        self.key_bytes = int(np.prod(self._kshape[1:])) * 4
        self.value_bytes = int(np.prod(self._vshape[1:])) * 4
        self.keys = cuda.mem_alloc(self.key_bytes * self.capacity)
        self.values = cuda.mem_alloc(self.value_bytes * self.capacity)
        self.valid_dev = cuda.mem_alloc(4 * self.capacity)
        cuda.memset_d8(self.keys, 0, self.key_bytes * self.capacity)
        cuda.memset_d8(self.values, 0, self.value_bytes * self.capacity)
        self._valid_host = cuda.pagelocked_empty(self.capacity, np.float32)
        self._dirty = True

    def _store(self, slot: int) -> None:
        c, s = self._cuda, self._stream
        with self._active():
            c.memcpy_dtod_async(int(self.keys) + slot * self.key_bytes, self._src["mem_key"],
                                self.key_bytes, s)
            c.memcpy_dtod_async(int(self.values) + slot * self.value_bytes,
                                self._src["mem_value"], self.value_bytes, s)

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
        k = np.empty(self._kshape[1:], np.float32)
        v = np.empty(self._vshape[1:], np.float32)
        with self._active():
            self._stream.synchronize()
            self._cuda.memcpy_dtoh(k, int(self.keys) + slot * self.key_bytes)
            self._cuda.memcpy_dtoh(v, int(self.values) + slot * self.value_bytes)
        return k, v

    def free(self) -> None:
        for a in (self.keys, self.values, self.valid_dev):
            a.free()


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, manifest: Manifest, engine_dir: str | Path, *, device_id: int = 0):
        super().__init__(manifest)
        engine_dir = Path(engine_dir)
        missing = [g for g in GRAPH_NAMES if not manifest.graphs[g].engine
                   or not (engine_dir / manifest.graphs[g].engine).is_file()]
        if missing:
            raise BackendUnavailableError(
                f"trt: {engine_dir} has no TensorRT engine for {missing}: build the engines on "
                "this GPU first, or use --backend ort-cuda / ort-cpu")
        trt, cuda = import_trt()
        self._trt, self._cuda = trt, cuda
        try:
            cuda.init()
            if device_id >= cuda.Device.count():
                raise BackendUnavailableError(f"trt: no CUDA device {device_id} "
                                              f"({cuda.Device.count()} found)")
            _check_compat(manifest, engine_dir, device_id)
            self._ctx = cuda.Device(device_id).retain_primary_context()
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
            self._engines = {g: self._load(g, engine_dir / str(manifest.graphs[g].engine))
                             for g in GRAPH_NAMES}
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
            bank_ptrs = {"mem_keys": self.bank.keys, "mem_values": self.bank.values,
                         "mem_valid": self.bank.valid_dev}
            self._contexts = {}
            for g, engine in self._engines.items():
                ctx = engine.create_execution_context()
                for t in (*manifest.graphs[g].inputs, *manifest.graphs[g].outputs):
                    ptr = bank_ptrs.get(t.name, self._dev.get(t.name))
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

    def _load(self, graph: str, path: Path) -> Any:
        trt = self._trt
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
            shape = tuple(engine.get_tensor_shape(n))
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
        return {"name": self.name, "tensorrt": self._trt.__version__,
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


def _check_compat(manifest: Manifest, engine_dir: Path, device_id: int) -> None:
    """Version/GPU check of the engines (runtime.trt_compat, written with the exporter)."""
    try:
        from runtime.trt_compat import check_engine_compat
    except ImportError:
        return
    for message in check_engine_compat(manifest, engine_dir, device_id=device_id):
        warnings.warn(f"trt: {message}", stacklevel=3)


__all__ = ["TrtBackend", "TrtBank"]
