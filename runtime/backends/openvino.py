"""OpenVINO backend (CPU): the ONNX graphs compiled by OpenVINO, numpy I/O, host bank.

memory_read runs on ONNX Runtime instead: OpenVINO's TopK + Gather over the (hw x T*hw)
affinity is several times slower than ORT's, while its convolutions (encoder, qam, decoder)
are the fastest here, especially in bf16 (docs/runtime.md, "Backends").

In bf16 the value encoder (`qam`) runs in FP32 for the frames that may stay in the memory (the
annotated frame, the candidates for the long-term memory): their keys and values are read by
every later frame while they stay memorised, and bf16's rounding of them flips identities among
look-alike objects. Its other runs fill the temporary slot, read by one frame only, as the
rounding of every other graph is, and stay in bf16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends import cpu_has_bf16
from runtime.backends.base import HostBackend
from runtime.backends.ort import import_ort, session_options
from runtime.core.config import check_threads, default_threads
from runtime.core.errors import BackendUnavailableError, EngineMismatchError
from runtime.core.manifest import GRAPH_NAMES, Manifest


class OpenVinoBackend(HostBackend):
    name = "openvino"

    def __init__(self, manifest: Manifest, engine_dir: str | Path, *, threads: int | None = None,
                 device: str = "CPU", inference_precision: str = "f32"):
        try:
            import openvino as ov
        except ImportError as e:
            raise BackendUnavailableError(f"openvino is not installed ({e}): "
                                          "pip install openvino") from None
        super().__init__(manifest)
        self._ov_version = ov.get_version()
        self.threads = check_threads(threads) if threads else default_threads()
        self.device = device
        props: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads,
                                 "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        self.inference_precision = inference_precision if manifest.precision == "fp32" else None
        if self.inference_precision == "bf16":
            self.name = "openvino-bf16"
        if self.inference_precision:
            # CPUs with AMX/AVX512-BF16 otherwise run FP32 graphs in bf16 ("bf16" opts in).
            props["INFERENCE_PRECISION_HINT"] = self.inference_precision
        core = ov.Core()
        self._requests: dict[str, Any] = {}
        self._outputs: dict[str, list[tuple[str, Any]]] = {}
        self._lasting_qam: Any = None  # the FP32 value encoder where `qam` runs in bf16 (above)
        self._next_lasts = True
        self._read_session = _ort_session(Path(engine_dir) / manifest.graphs["memory_read"].file,
                                          self.threads)
        for g in GRAPH_NAMES:
            if g == "memory_read":
                continue
            path = Path(engine_dir) / manifest.graphs[g].file
            compiled = _compile(core, path, device, props)
            spec = manifest.graphs[g]
            # A port may carry several names (ONNX value names of fused nodes): match by set.
            ports = {n: p for p in (*compiled.inputs, *compiled.outputs) for n in p.get_names()}
            for t in (*spec.inputs, *spec.outputs):
                p = ports.get(t.name)
                have = p and (tuple(p.get_shape()), p.get_element_type().to_dtype().name)
                if have != (t.shape, t.dtype):
                    raise EngineMismatchError(f"{path}: tensor {t.name!r} is {have}, "
                                              f"the manifest says {(t.shape, t.dtype)}")
            self._requests[g] = compiled.create_infer_request()
            self._outputs[g] = [(t.name, ports[t.name]) for t in spec.outputs]
            if g == "qam" and self.inference_precision == "bf16" and cpu_has_bf16():
                self._lasting_qam = _compile(core, path, device, {
                    **props, "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()

    def _execute(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs are the backend's persistent arrays: share them instead of copying the bank;
        # the outputs come back as fresh copies (share_outputs=False).
        if graph == "memory_read":
            (readout,) = self._read_session.run(["readout"], inputs)
            return {"readout": readout}
        if graph == "qam":
            lasting, self._next_lasts = self._next_lasts, True
            if lasting and self._lasting_qam is not None:
                results = self._lasting_qam.infer(inputs, share_inputs=True)
                # The same graph compiled again: its ports are other objects, matched by name.
                return {name: results[name] for name, _ in self._outputs[graph]}
        results = self._requests[graph].infer(inputs, share_inputs=True)
        return {name: results[port] for name, port in self._outputs[graph]}

    def next_qam_lasts(self, lasting: bool) -> None:
        self._next_lasts = lasting

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "openvino": self._ov_version, "device": self.device,
                "threads": self.threads, "inference_precision": self.inference_precision,
                "fp32_lasting_qam": self._lasting_qam is not None}

    def close(self) -> None:
        self._requests.clear()
        self._lasting_qam = None


def _compile(core: Any, path: Path, device: str, props: dict[str, Any]) -> Any:
    try:
        return core.compile_model(core.read_model(str(path)), device, props)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        raise EngineMismatchError(f"{path}: OpenVINO cannot compile it: "
                                  f"{str(e).strip().splitlines()[0]}") from None


def _ort_session(path: Path, threads: int) -> Any:
    try:
        return import_ort().InferenceSession(str(path), session_options(threads),
                                             providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise EngineMismatchError(f"{path}: onnxruntime cannot load it: "
                                  f"{str(e).splitlines()[0]}") from None
