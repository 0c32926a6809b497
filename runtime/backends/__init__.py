"""Backend choice: explicit by name, or `auto` (TensorRT > ORT CUDA > OpenVINO > ORT CPU).

On CPU, `auto` prefers OpenVINO running the FP32 graphs in bf16 where the CPU has native bf16
(as accurate as FP32 and faster than ORT CPU: docs/runtime.md, "Backends").

Each backend module imports its library lazily, so a missing GPU package only matters when
that backend is asked for (BackendUnavailableError, one line).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from runtime.backends.base import Backend
from runtime.core.config import RuntimeConfig
from runtime.core.errors import BackendUnavailableError, EngineMismatchError
from runtime.core.manifest import Manifest

BACKENDS = ("auto", "trt", "ort-cuda", "ort-cpu", "openvino", "openvino-bf16")
GPU_BACKENDS = ("trt", "ort-cuda")
# Where OpenVINO beats ORT CPU on graphs run as exported: INT8 Q/DQ ones (its int8 convolutions;
# for FP32 ones, only in bf16, above); FP16 graphs are meant for GPUs (docs/runtime.md).
OPENVINO_PRECISIONS = ("int8",)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 (AMX or AVX-512 BF16), where OpenVINO's bf16 execution
    of the FP32 graphs is the fastest CPU configuration (J&F within 0.5 point of FP32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def engines_present(manifest: Manifest, engine_dir: str | Path) -> bool:
    return all(g.engine and (Path(engine_dir) / g.engine).is_file()
               for g in manifest.graphs.values())


def auto_candidates(manifest: Manifest, engine_dir: str | Path) -> list[str]:
    """The backends `auto` tries, best first; ORT CPU always comes last."""
    from runtime.backends.ort import cuda_available

    out = []
    if engines_present(manifest, engine_dir) and _installed("tensorrt") and _installed("pycuda"):
        out.append("trt")
    if cuda_available():
        out.append("ort-cuda")
    if _installed("openvino"):
        if manifest.precision == "fp32" and cpu_has_bf16():
            out.append("openvino-bf16")
        elif manifest.precision in OPENVINO_PRECISIONS:
            out.append("openvino")
    return [*out, "ort-cpu"]


def resolve_auto(manifest: Manifest, engine_dir: str | Path) -> str:
    """The backend `auto` picks first for this manifest on this machine."""
    return auto_candidates(manifest, engine_dir)[0]


def create_backend(name: str, manifest: Manifest, engine_dir: str | Path,
                   config: RuntimeConfig) -> Backend:
    """Build backend `name` (one of BACKENDS) for a manifest; `config` must be resolved.

    `auto` falls back to the next candidate, with a warning, when one cannot start here (e.g.
    TensorRT installed but no usable GPU, or engines built for another GPU).
    """
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return _create(name, manifest, engine_dir, config)
    candidates = auto_candidates(manifest, engine_dir)
    for i, candidate in enumerate(candidates[:-1]):
        try:
            return _create(candidate, manifest, engine_dir, config)
        except (BackendUnavailableError, EngineMismatchError) as e:
            warnings.warn(f"auto: {candidate} cannot run here ({e}); trying {candidates[i + 1]}",
                          stacklevel=2)
    return _create(candidates[-1], manifest, engine_dir, config)


def _create(name: str, manifest: Manifest, engine_dir: str | Path,
            config: RuntimeConfig) -> Backend:
    threads = config.threads
    if name in ("ort-cpu", "ort-cuda"):
        from runtime.backends.ort import OrtBackend

        return OrtBackend(manifest, engine_dir, device="cpu" if name == "ort-cpu" else "cuda",
                          device_id=config.device, threads=threads, spin=config.spin)
    if name in ("openvino", "openvino-bf16"):
        from runtime.backends.openvino import OpenVinoBackend

        precision = "bf16" if name == "openvino-bf16" else "f32"
        return OpenVinoBackend(manifest, engine_dir, threads=threads,
                               inference_precision=precision)
    from runtime.backends.trt import TrtBackend

    return TrtBackend(manifest, engine_dir, device_id=config.device)


__all__ = ["BACKENDS", "GPU_BACKENDS", "Backend", "auto_candidates", "create_backend", "engines_present",
           "resolve_auto"]
