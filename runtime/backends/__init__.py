"""Backend choice: explicit by name, or `auto` (TensorRT > ORT CUDA > OpenVINO > ORT CPU).

Each backend module imports its library lazily, so a missing GPU package only matters when
that backend is asked for (BackendUnavailableError, one line).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runtime.backends.base import Backend
from runtime.config import RuntimeConfig
from runtime.errors import BackendUnavailableError
from runtime.manifest import Manifest

BACKENDS = ("auto", "trt", "ort-cuda", "ort-cpu", "openvino")
# Where OpenVINO beats ORT CPU (single-thread CPU ms per frame, light model, 240x432, 1 object,
# 7 slots): INT8 Q/DQ graphs 66 vs 101 (its int8 convolutions are ~3x faster); FP32 111 vs 95
# (same convolutions, slower TopK in memory_read). FP16 graphs are meant for GPUs.
OPENVINO_PRECISIONS = ("int8",)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def engines_present(manifest: Manifest, engine_dir: str | Path) -> bool:
    return all(g.engine and (Path(engine_dir) / g.engine).is_file()
               for g in manifest.graphs.values())


def resolve_auto(manifest: Manifest, engine_dir: str | Path) -> str:
    """The backend `auto` picks for this manifest on this machine."""
    from runtime.backends.ort import cuda_available

    if engines_present(manifest, engine_dir) and _installed("tensorrt") and _installed("pycuda"):
        return "trt"
    if cuda_available():
        return "ort-cuda"
    if _installed("openvino") and manifest.precision in OPENVINO_PRECISIONS:
        return "openvino"
    return "ort-cpu"


def create_backend(name: str, manifest: Manifest, engine_dir: str | Path,
                   config: RuntimeConfig) -> Backend:
    """Build backend `name` (one of BACKENDS) for a manifest; `config` must be resolved."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = resolve_auto(manifest, engine_dir)
    threads = config.threads
    if name in ("ort-cpu", "ort-cuda"):
        from runtime.backends.ort import OrtBackend

        return OrtBackend(manifest, engine_dir, device="cpu" if name == "ort-cpu" else "cuda",
                          device_id=config.device, threads=threads, spin=config.spin)
    if name == "openvino":
        from runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(manifest, engine_dir, threads=threads)
    from runtime.backends.trt import TrtBackend

    return TrtBackend(manifest, engine_dir, device_id=config.device)


__all__ = ["BACKENDS", "Backend", "create_backend", "engines_present", "resolve_auto"]
