"""Build one serialized TensorRT 10 engine per exported graph and record them in the manifest.

    python export/build_engines.py DIR [--fp16] [--int8] [--workspace GB] [--timing-cache FILE]

Run it on the machine (TensorRT version + GPU) that will run the engines: a plan is specific to
both, and the runtime refuses others (runtime/backends/trt_compat.py). Builds on the current
CUDA device (choose it with CUDA_VISIBLE_DEVICES).

Precision. By default the network is STRONGLY_TYPED: types come from the ONNX graph, so an
`--fp16` export (explicit Casts) builds FP16 engines, an `--int8` export (Q/DQ) builds explicit
INT8 engines and an FP32 export builds FP32 engines (TF32 is on by default). This is the
TensorRT >= 10.12 way ("precision-control build flags are not required"; TensorRT 11 has no
FP16/INT8 flags). `--fp16`/`--int8` instead build weakly typed with the (deprecated in 10.12)
BuilderFlag.FP16/INT8, letting TensorRT pick lower-precision kernels per layer for a graph
exported in higher precision; `--int8` needs a Q/DQ (`--int8`) export, since implicit INT8
calibration is deprecated in TensorRT 10.1.

API used (docs/spec/tensorrt-api-notes.md): Builder, create_network(flags), OnnxParser.parse_from_file +
get_error, create_builder_config, set_memory_pool_limit(WORKSPACE), set_flag, an optimisation
profile with min = opt = max = the manifest's static shapes, create/set/serialize timing cache,
build_serialized_network (None on failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.cli import fail, path_arg
from runtime.core.manifest import GRAPH_NAMES, MANIFEST_NAME, GraphSpec, Manifest, ManifestError
from runtime.media.outputs import write_atomic

INSTALL_HINT = ('TensorRT is not installed: on a machine with an NVIDIA GPU, pip install ".[trt]" '
                "(NVIDIA's tensorrt 10.x wheels + pycuda)")
TIMING_CACHE = "timing.cache"

if TYPE_CHECKING:  # imported where used (optional); typed against the stubs (test_typecheck.py)
    import tensorrt as trt


class BuildError(RuntimeError):
    """An engine could not be built (parser error, builder failure, wrong shapes)."""


def build_engines(
    engine_dir: str | Path, *, fp16: bool = False, int8: bool = False, workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None, verbose: bool = False,
) -> Manifest:
    """Build `<graph>.engine` for every graph in `engine_dir` and update its manifest."""
    import tensorrt as trt

    engine_dir = Path(engine_dir)
    manifest = Manifest.load(engine_dir)
    if int8 and manifest.precision != "int8":
        raise BuildError(f"--int8 needs a Q/DQ export (python export/to_onnx.py CKPT --int8 "
                         f"--calib FRAMES); {engine_dir} is {manifest.precision}")
    flags = [name for name, on in (("FP16", fp16), ("INT8", int8)) if on]
    missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]
    if missing:
        raise BuildError(f"TensorRT {trt.__version__} has no BuilderFlag {missing}: build "
                         "without --fp16/--int8 (strongly typed; export in that precision)")
    strongly_typed = not flags
    _static_check(engine_dir, manifest)

    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = Path(timing_cache) if timing_cache else engine_dir / TIMING_CACHE
    cache = builder.create_builder_config().create_timing_cache(
        cache_path.read_bytes() if cache_path.is_file() else b"")
    graphs = dict(manifest.graphs)
    for name in GRAPH_NAMES:
        spec = manifest.graphs[name]
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        for f in flags:
            config.set_flag(getattr(trt.BuilderFlag, f))
        if not config.set_timing_cache(cache, False):  # a cache from another GPU/TensorRT
            print(f"warning: ignoring {cache_path} (another GPU or TensorRT version)",
                  file=sys.stderr)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
        t0 = time.perf_counter()
        plan = _build(builder, logger, config, engine_dir / spec.file, spec, strongly_typed)
        engine_file = f"{name}.engine"
        write_atomic(engine_dir / engine_file, plan)
        graphs[name] = dataclasses.replace(spec, engine=engine_file,
                                           engine_sha256=hashlib.sha256(plan).hexdigest())
        print(f"{name}: {engine_file} ({len(plan) / 2**20:.1f} MiB, "
              f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    write_atomic(cache_path, bytes(memoryview(cache.serialize())))

    gpu_name, cc = gpu_info()
    manifest = dataclasses.replace(manifest, graphs=graphs, tensorrt={
        "version": trt.__version__, "gpu_name": gpu_name, "compute_capability": cc,
        "strongly_typed": strongly_typed, "builder_flags": flags, "workspace_gb": workspace_gb,
        "hardware_compatibility_level": "NONE", "version_compatible": False,
        "timing_cache": cache_path.name if cache_path.parent == engine_dir else str(cache_path),
    })
    manifest.validate()
    write_atomic(engine_dir / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def _build(builder: trt.Builder, logger: trt.ILogger, config: trt.IBuilderConfig,
           onnx_path: Path, spec: GraphSpec, strongly_typed: bool) -> bytes:
    import tensorrt as trt

    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path.name}: the ONNX parser failed: {errors}")
    declared = {t.name: t.shape for t in spec.inputs}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = declared.get(tensor.name)
        if shape is None:
            raise BuildError(f"{onnx_path.name}: input {tensor.name} is not in the manifest")
        dims = tuple(tensor.shape[:])  # Dims slice like tuples
        if dims != shape:
            raise BuildError(f"{onnx_path.name}: input {tensor.name} {dims} "
                             f"does not match the manifest's static {shape}")
        static = trt.Dims(list(shape))
        profile.set_shape(tensor.name, static, static, static)  # min = opt = max: static
    config.add_optimization_profile(profile)
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    if outputs != {t.name for t in spec.outputs}:
        raise BuildError(f"{onnx_path.name}: outputs {sorted(outputs)} do not match the "
                         f"manifest's {[t.name for t in spec.outputs]}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx_path.name}: TensorRT could not build the engine (run with "
                         "--verbose for the builder log)")
    return bytes(memoryview(plan))


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(name, "major.minor") of CUDA device `device`, via pycuda or cuda-python."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, props = cudart.cudaGetDeviceProperties(device)
        if err != cudart.cudaError_t.cudaSuccess:
            raise BuildError(f"cudaGetDeviceProperties({device}) failed: {err}")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    except ImportError:
        raise BuildError("cannot read the GPU name: pip install pycuda (or cuda-python)") from None


def _static_check(engine_dir: Path, manifest: Manifest) -> None:
    """The offline TensorRT checks (export/trt_check.py), where onnx is installed."""
    try:
        from export.trt_check import check_model, errors_of
    except ImportError:
        return
    for spec in manifest.graphs.values():
        errors = errors_of(check_model(engine_dir / spec.file))
        if errors:
            raise BuildError(f"{spec.file} fails the TensorRT checks: "
                             + "; ".join(map(str, errors)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir", type=path_arg, help="folder written by export/to_onnx.py")
    p.add_argument("--fp16", action="store_true",
                   help="weakly typed build with BuilderFlag.FP16 (default: strongly typed)")
    p.add_argument("--int8", action="store_true",
                   help="weakly typed build with BuilderFlag.INT8 (needs an --int8 export)")
    p.add_argument("--workspace", type=float, default=4.0, metavar="GB",
                   help="builder workspace memory pool limit (default 4)")
    p.add_argument("--timing-cache", type=path_arg, help=f"default: DIR/{TIMING_CACHE}")
    p.add_argument("--verbose", action="store_true", help="TensorRT INFO log")
    args = p.parse_args(argv)
    if not (math.isfinite(args.workspace) and args.workspace > 0):
        p.error(f"--workspace {args.workspace}: expected a number of GB > 0")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return fail(INSTALL_HINT)
    try:
        m = build_engines(args.engine_dir, fp16=args.fp16, int8=args.int8,
                          workspace_gb=args.workspace, timing_cache=args.timing_cache,
                          verbose=args.verbose)
    except (BuildError, ManifestError) as e:
        return fail(e)
    built = m.tensorrt or {}
    print(f"TensorRT {built.get('version')} engines for {built.get('gpu_name')} "
          f"(sm {built.get('compute_capability')}) in {args.engine_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
