"""Refuse TensorRT engines built for another TensorRT version or GPU, with a clear message.

A serialized plan is specific to the TensorRT version and the GPU it was built on
(docs/spec/tensorrt-api-notes.md): deserializing it elsewhere fails with an opaque error or, across GPUs
of the same family, runs with kernels tuned for another chip. `export/build_engines.py`
records what it built for in the manifest's `tensorrt` field:

    {"version": "10.16.1.x", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
     "hardware_compatibility_level": "NONE", "version_compatible": false, ...}

Torch-free and TensorRT-free: the check takes the live versions as strings (the TensorRT
backend passes its own).
"""

from __future__ import annotations

from typing import Any

from runtime.core.errors import EngineMismatchError


class EngineCompatError(EngineMismatchError):
    """The engines were built for another TensorRT version or GPU: rebuild them here."""


REBUILD = "rebuild them on this machine: python export/build_engines.py ENGINE_DIR"


def check_engine_compat(manifest_tensorrt: dict[str, Any] | None, trt_version: str,
                        gpu_name: str, compute_capability: str) -> list[str]:
    """Raise EngineCompatError if engines described by `manifest_tensorrt` cannot run with
    TensorRT `trt_version` on GPU `gpu_name` (compute capability "major.minor"); return
    warnings for combinations that run but were not what the engines were tuned for."""
    built = manifest_tensorrt or {}
    if not built.get("version"):
        raise EngineCompatError(f"the manifest records no TensorRT build: {REBUILD}")
    warnings: list[str] = []
    want, have = _version(built["version"]), _version(trt_version)
    if built.get("version_compatible"):
        # VERSION_COMPATIBLE plans run on the same or a later TensorRT of the same major.
        if have[:1] != want[:1] or have[:3] < want[:3]:
            raise EngineCompatError(
                f"engines built with TensorRT {built['version']} (version-compatible) cannot "
                f"run on TensorRT {trt_version}: {REBUILD}")
    elif have[:3] != want[:3]:
        raise EngineCompatError(f"engines built with TensorRT {built['version']}, this is "
                                f"TensorRT {trt_version}: {REBUILD}")
    elif have != want:
        warnings.append(f"engines built with TensorRT {built['version']}, running "
                        f"{trt_version} (same release, different build)")

    level = str(built.get("hardware_compatibility_level", "NONE")).upper()
    cc_built, cc_here = _cc(built.get("compute_capability", "")), _cc(compute_capability)
    if level.endswith("AMPERE_PLUS"):
        if cc_here < (8, 0):
            raise EngineCompatError(f"engines built for Ampere or newer GPUs; {gpu_name} has "
                                    f"compute capability {compute_capability}: {REBUILD}")
    elif cc_built != cc_here:
        raise EngineCompatError(
            f"engines built for {built.get('gpu_name', '?')} (compute capability "
            f"{built.get('compute_capability', '?')}), this GPU is {gpu_name} "
            f"({compute_capability}): {REBUILD}")
    if built.get("gpu_name") and built["gpu_name"] != gpu_name:
        warnings.append(f"engines were tuned on {built['gpu_name']}, running on {gpu_name}: "
                        "rebuild for best speed")
    return warnings


def _version(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).split("."):
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _cc(v: Any) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return _version(str(v))
