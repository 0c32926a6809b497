"""ONNX Runtime backend, CPU or CUDA: the same code, only the device string differs.

Every tensor lives in an OrtValue allocated once on the target device and bound to each
session through IO binding; host feeds are copied in with `update_inplace`, fetched outputs
copied out with `.numpy()`.

ORT's Python API cannot copy into part of an OrtValue, so bank writes copy nothing: qam's
per-object outputs (`mem_key_i`, `mem_value_i`) are bound straight into the bank, each at its
object's chunk of the physical slot that currently backs the temp slot (the bank layout and
chunk offsets are the manifest's), and writing the frame to another slot swaps the two slots'
physical storage. memory_read is invariant to the order of slots, so only the valid vector
(uploaded in physical order) has to follow the mapping. Running this on CPU exercises the CUDA
code path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import BANK_TENSORS, Backend, Bank
from runtime.core.config import check_threads, default_threads
from runtime.core.errors import BackendUnavailableError, EngineMismatchError
from runtime.core.manifest import GRAPH_NAMES, Manifest

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError(f"onnxruntime is not installed ({e}): "
                                      "pip install onnxruntime (CPU) or onnxruntime-gpu") from None
    return onnxruntime


def session_options(threads: int | None = None, *, spin: bool = False) -> Any:
    """The one ONNX Runtime session configuration (runtime backends, benchmarks, calibration).

    All graph optimisations; ops one after another (the graphs are chains) on `threads` intra-op
    threads (default: default_threads()); worker threads sleep between ops unless `spin` (see
    RuntimeConfig.spin); warnings only.
    """
    ort = import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = check_threads(threads) if threads else default_threads()
    so.inter_op_num_threads = 1
    so.enable_mem_pattern = True
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


def cuda_available() -> bool:
    """True when this onnxruntime build offers the CUDA execution provider."""
    try:
        return "CUDAExecutionProvider" in import_ort().get_available_providers()
    except BackendUnavailableError:
        return False


class OrtBank(Bank):
    """Bank as two device OrtValues plus a logical -> physical slot map (see module doc)."""

    def __init__(self, manifest: Manifest, ort: Any, device: str, device_id: int):
        super().__init__(manifest)
        spec = manifest.graphs["memory_read"]
        alloc = ort.OrtValue.ortvalue_from_shape_and_type
        self.tensors: dict[str, Any] = {}
        for name in ("mem_keys", "mem_values"):
            shape = spec.input(name).shape
            self.tensors[name] = alloc(list(shape), np.float32, device, device_id)
            # fresh device memory is uninitialised
            self.tensors[name].update_inplace(np.zeros(shape, np.float32))
        self.valid_value = alloc([self.capacity], np.float32, device, device_id)
        self.physical = list(range(self.capacity))  # logical slot -> physical slot
        self._dirty = True

    def chunk_pointers(self, slot: int) -> dict[str, int]:
        """qam output name -> device address of its chunk of logical `slot` (bound there)."""
        p = self.physical[slot]
        return {name: self.tensors[tensor].data_ptr() +
                4 * self.manifest.bank_chunk(tensor, obj, p)[0]
                for name, tensor, obj in self.writes}

    def _store(self, slot: int) -> None:
        # qam already wrote into the temp slot's storage: hand that storage to `slot`.
        t = self.temp_slot
        self.physical[slot], self.physical[t] = self.physical[t], self.physical[slot]

    def _valid_changed(self) -> None:
        self._dirty = True

    def upload_valid(self) -> None:
        if self._dirty:
            phys = np.zeros(self.capacity, np.float32)
            phys[self.physical] = self._valid
            self.valid_value.update_inplace(phys)
            self._dirty = False

    def read(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        self._check(slot)
        p = self.physical[slot]
        return (self.tensors["mem_keys"].numpy()[:, p].copy(),
                self.tensors["mem_values"].numpy()[:, p].copy())


class OrtBackend(Backend):
    """ONNX Runtime on `device` "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider)."""

    def __init__(self, manifest: Manifest, engine_dir: str | Path, *, device: str = "cpu",
                 device_id: int = 0, threads: int | None = None, spin: bool = False):
        super().__init__(manifest)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device={device!r}: cpu|cuda")
        ort = import_ort()
        self._ort = ort
        self.device, self.device_id = device, device_id
        self.name = "ort-cpu" if device == "cpu" else "ort-cuda"
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    "ort-cuda: this onnxruntime has no CUDAExecutionProvider "
                    f"(providers: {ort.get_available_providers()}); pip install onnxruntime-gpu")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device_id}),
                                    "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.threads = threads or default_threads()
        self.spin = spin
        so = session_options(self.threads, spin=spin)
        self.sessions: dict[str, Any] = {}
        for g in GRAPH_NAMES:
            path = Path(engine_dir) / manifest.graphs[g].file
            try:
                sess = ort.InferenceSession(str(path), so, providers=providers)
            except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
                raise EngineMismatchError(f"{path}: onnxruntime cannot load it: "
                                          f"{str(e).splitlines()[0]}") from None
            if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
                raise BackendUnavailableError(
                    "ort-cuda: the CUDA provider failed to initialise (CUDA/cuDNN libraries or "
                    "GPU missing); see onnxruntime's log")
            self._check_io(g, sess, path)
            self.sessions[g] = sess

        alloc = ort.OrtValue.ortvalue_from_shape_and_type
        self.values: dict[str, Any] = {}
        self.bank = OrtBank(manifest, ort, device, device_id)
        self._chunks = {name for name, _, _ in self.bank.writes}  # bound into the bank
        for n, s in self.specs.items():
            if n in BANK_TENSORS or n in self._chunks:
                continue
            v = alloc(list(s.shape), np.dtype(s.dtype), device, device_id)
            v.update_inplace(np.zeros(s.shape, s.dtype))
            self.values[n] = v
        self.bindings: dict[str, Any] = {}
        bank_values = {**self.bank.tensors, "mem_valid": self.bank.valid_value}
        for g, sess in self.sessions.items():
            b = sess.io_binding()
            for t in manifest.graphs[g].inputs:
                src = bank_values[t.name] if t.name in bank_values else self.values[t.name]
                b.bind_ortvalue_input(t.name, src)
            for t in manifest.graphs[g].outputs:
                if t.name not in self._chunks:
                    b.bind_ortvalue_output(t.name, self.values[t.name])
            self.bindings[g] = b
        self._qam_target: dict[str, int] = {}

    def _check_io(self, graph: str, sess: Any, path: Path) -> None:
        spec = self.manifest.graphs[graph]
        for kind, got, want in (("input", sess.get_inputs(), spec.inputs),
                                ("output", sess.get_outputs(), spec.outputs)):
            have = {a.name: (tuple(a.shape), _ORT_TYPES.get(a.type, a.type)) for a in got}
            for t in want:
                if have.get(t.name) != (t.shape, t.dtype):
                    raise EngineMismatchError(
                        f"{path}: {kind} {t.name!r} is {have.get(t.name)}, the manifest says "
                        f"{(t.shape, t.dtype)}: graph and manifest come from different exports")

    def _bind_qam_outputs(self) -> None:
        target = self.bank.chunk_pointers(self.bank.temp_slot)
        if target != self._qam_target:
            b = self.bindings["qam"]
            for name, ptr in target.items():
                b.bind_output(name, self.device, self.device_id, np.float32,
                              list(self.specs[name].shape), ptr)
            self._qam_target = target

    def run(self, graph: str, feeds: Mapping[str, np.ndarray] | None = None,
            fetch: Sequence[str] = ()) -> dict[str, np.ndarray]:
        for name, array in (feeds or {}).items():
            self.values[name].update_inplace(self._check_feed(name, array))
        if graph == "memory_read":
            self.bank.upload_valid()
        elif graph == "qam":
            self._bind_qam_outputs()
        self.sessions[graph].run_with_iobinding(self.bindings[graph])
        out = {}
        for n in fetch:
            if n in self._chunks:  # they live in the bank's temp slot
                k, v = self.bank.read(self.bank.temp_slot)
                tensor, obj = next((t, o) for name, t, o in self.bank.writes if name == n)
                out[n] = (k if tensor == "mem_keys" else v)[obj]
            else:
                out[n] = self.values[n].numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "onnxruntime": self._ort.__version__,
                "providers": self.sessions["encoder"].get_providers(),
                "threads": self.threads, "device_id": self.device_id, "spin": self.spin}

    def close(self) -> None:
        self.bindings.clear()
        self.sessions.clear()
