"""Export a QDMN checkpoint to the five static-shape ONNX graphs + manifest the runtime reads.

    python export/to_onnx.py CKPT --out DIR [--size H W] [--max-objects N] [--memory-size B]
                             [--fp16] [--int8 --calib DIR_OF_FRAMES] [--opset 17]

Everything is written to a temporary folder next to DIR and moved in at the end, so a failed
export leaves nothing half-written. Re-exporting into DIR replaces only the files an earlier
export (or `build_engines.py`) wrote and its manifest lists; anything else in DIR is kept, and a
file of the user's that the export would overwrite is refused. Precisions (all keep FP32/uint8 graph I/O):

    fp32  the traced graphs as they are.
    fp16  weights and compute in FP16 (explicit Casts, so a strongly typed TensorRT build runs
          them in FP16), except the numerically fragile parts, kept in FP32:
          - decoder: the final sigmoid + soft aggregation (its clamp at 1 - 1e-7 rounds to 1 in
            FP16, so log(p / (1 - p)) becomes inf and the softmax NaN);
          - memory_read: affinity, top-k and its softmax (an FP16 affinity of magnitude ~20 has
            a 0.016 step, i.e. ~1.6 % error in every softmax weight); only the readout matmul
            over the values runs in FP16.
    int8  static QDQ quantisation (see export/quantize.py) of encoder, qam and decoder convs;
          memory_read stays FP32.

Parity of each precision with the PyTorch FP32 functions, as measured: docs/export.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxslim
import torch

from export.errors import ExportError, ExportInterrupted
from export.fp16 import convert_to_fp16
from export.trt_check import check_model, errors_of
from runtime.cli import fail, path_arg
from runtime.core.errors import OutputError
from runtime.core.manifest import (
    GRAPH_NAMES,
    MANIFEST_NAME,
    PRECISIONS,
    STRIDE,
    GraphSpec,
    Manifest,
    ManifestError,
    file_sha256,
)
from runtime.core.memory_policy import DEFAULT_MEMORY_SIZE
from runtime.media.masks import VOID_ID
from runtime.media.outputs import (
    StagedFolder,
    ignore_interrupts,
    interrupt_exit_code,
    run_whole,
    terminate_as_interrupt,
)
from training.checkpoint import CheckpointError, checkpoint_quality_score, load_model
from training.config import ConfigError
from training.graphs import build_graphs, example_inputs, specs_for
from training.model import IMAGENET_MEAN, IMAGENET_STD, QDMN

log = logging.getLogger(__name__)

DEFAULT_SIZE = (480, 864)
# Opsets the exporter writes: up to the TorchScript exporter's newest; TensorRT parses all of
# them (export.trt_ops.MIN_OPSET..MAX_OPSET, which tests/test_trt_check.py holds it to).
EXPORT_OPSETS = range(17, 21)
MAX_OBJECT_ID = VOID_ID - 1  # object ids are palette indices: 0 background, 255 void

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "uint8": onnx.TensorProto.UINT8}


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    *,
    size: tuple[int, int] | None = None,
    max_objects: int = 4,
    memory_size: int = DEFAULT_MEMORY_SIZE,
    precision: str = "fp32",
    opset: int = 17,
    calib_frames: str | Path | None = None,
) -> Manifest:
    """Export `ckpt_path` to `out_dir` (five ONNX graphs + manifest.json); return the manifest.

    size: (H, W), multiples of STRIDE (16); None = the checkpoint's config["image_size"], else 480x864.
    calib_frames: a folder of frames (or of sequence folders), required for precision="int8".
    Raises ExportError, or CheckpointError for an unusable checkpoint; ExportInterrupted (a
    KeyboardInterrupt) for a Ctrl-C/SIGTERM that came while the finished export was moved in.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} not in {PRECISIONS}")
    if opset not in EXPORT_OPSETS:
        raise ExportError(f"opset {opset} not supported: use {EXPORT_OPSETS.start}.."
                          f"{EXPORT_OPSETS.stop - 1}")
    if not 1 <= max_objects <= MAX_OBJECT_ID:
        raise ExportError(f"max_objects must be in 1..{MAX_OBJECT_ID} (object ids are palette "
                          f"indices, {VOID_ID} is void), got {max_objects}")
    if memory_size < 1:
        raise ExportError(f"memory_size must be >= 1, got {memory_size}")
    if size is not None:
        check_size(size)
    if precision == "int8":
        if calib_frames is None:
            raise ExportError("int8 needs calibration frames (--calib DIR_OF_FRAMES)")
        from export.quantize import find_frames

        find_frames(calib_frames)  # fail before the slow part if the folder has no frames

    model, meta = load_model(ckpt_path)
    if size is None:
        size = _checkpoint_size(meta)
    height, width = check_size(size)
    try:
        staged = StagedFolder(out_dir, index=MANIFEST_NAME, owned=lambda: _owned(Path(out_dir)),
                              reserved=lambda name: name in _GRAPH_FILES)
    except OutputError as e:
        raise ExportError(str(e)) from None
    try:
        manifest = _export_into(model, meta, Path(ckpt_path), staged.path, height, width,
                                max_objects, memory_size, precision, opset, calib_frames)
        held = run_whole(staged.commit)  # an interrupt meanwhile comes too late to stop it
    except OutputError as e:
        raise ExportError(str(e)) from None
    except OSError as e:  # e.g. the disk filled up
        staged.abort()
        raise ExportError(f"cannot write the export into {out_dir}: {e.strerror or e}") from None
    except BaseException:
        staged.abort()
        raise
    if held is not None:
        raise ExportInterrupted(manifest) from held
    return manifest


def _export_into(model: QDMN, meta: dict, ckpt: Path, tmp: Path, height: int, width: int,
                 max_objects: int, memory_size: int, precision: str, opset: int,
                 calib_frames: str | Path | None) -> Manifest:
    specs = specs_for(model, height, width, max_objects, memory_size)
    modules = build_graphs(model, height, width)
    sha = file_sha256(ckpt)
    graphs: dict[str, onnx.ModelProto] = {}
    for name in GRAPH_NAMES:
        graphs[name] = export_graph(modules[name], specs[name], opset)
    if precision == "fp16":
        graphs = {name: convert_fp16(m, name) for name, m in graphs.items()}
    elif precision == "int8":
        from export.quantize import quantize_graphs

        graphs = quantize_graphs(graphs, specs, calib_frames, workdir=tmp)
    for name, m in graphs.items():
        _finalise(m, name, specs[name], precision, sha)
        onnx.save(m, str(tmp / specs[name].file))
        specs[name] = dataclasses.replace(specs[name], sha256=file_sha256(tmp / specs[name].file))
    cfg = model.cfg
    manifest = Manifest(
        height=height, width=width, max_objects=max_objects, memory_size=memory_size,
        top_k=cfg.top_k, key_dim=cfg.key_dim, value_dim=cfg.value_dim, precision=precision,
        graphs=specs, opset=opset,
        checkpoint_sha256=sha, model_config=cfg.to_dict(),
        quality_score=checkpoint_quality_score(meta),
        normalisation={"input": "uint8 RGB NHWC", "mean": list(IMAGENET_MEAN),
                       "std": list(IMAGENET_STD), "scale": 1 / 255},
    )
    manifest.save(tmp)
    return manifest


def export_graph(module: torch.nn.Module, spec: GraphSpec, opset: int = 17) -> onnx.ModelProto:
    """Trace `module` at the spec's static shapes, fold shape arithmetic (onnxslim), validate."""
    args = example_inputs(spec, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as d, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (which needs onnxscript,
        # not a dependency here); with static shapes its output is the same.
        warnings.simplefilter("ignore")
        path = Path(d) / "graph.onnx"
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], do_constant_folding=True,
        )
        model = onnx.load(str(path))
    model = onnxslim.slim(model)
    _name_nodes(model)
    check_io(model, spec, float_type=onnx.TensorProto.FLOAT)
    return model


def convert_fp16(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """FP16 weights/compute with FP32 I/O; see the module docstring for what stays FP32."""
    half = convert_to_fp16(model, keep_fp32=fp32_nodes(model, name))
    _name_nodes(half)
    return half


def fp32_nodes(model: onnx.ModelProto, name: str) -> set[str]:
    """Names of the nodes an FP16 export keeps in FP32 (see the module docstring)."""
    nodes = list(model.graph.node)  # topologically sorted
    if name == "decoder":
        sigmoids = [n for n in nodes if n.op_type == "Sigmoid"]
        return _descendants(nodes, sigmoids[-1:]) if sigmoids else set()
    if name == "memory_read":
        values_path = _descendants(nodes, [], {"mem_values"})
        return {n.name for n in nodes} - values_path
    return set()


def _descendants(nodes: list[onnx.NodeProto], start: list[onnx.NodeProto],
                 tensors: set[str] | None = None) -> set[str]:
    """Names of `start` and every node downstream of it or of `tensors`."""
    live = set(tensors or ())
    start_ids = {id(n) for n in start}
    out = set()
    for n in nodes:
        if id(n) in start_ids or any(i in live for i in n.input):
            live.update(n.output)
            out.add(n.name)
    return out


def check_io(model: onnx.ModelProto, spec: GraphSpec, float_type: int) -> None:
    """The graph's inputs/outputs are exactly the spec's names, static shapes and dtypes."""
    for kind, declared, actual in (("input", spec.inputs, model.graph.input),
                                   ("output", spec.outputs, model.graph.output)):
        got = [v.name for v in actual]
        if got != [t.name for t in declared]:
            raise ExportError(f"{spec.file}: {kind}s {got}, expected {[t.name for t in declared]}")
        for t, v in zip(declared, actual):
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            want = _ONNX_DTYPES[t.dtype] if t.dtype == "uint8" else float_type
            if dims != t.shape or tt.elem_type != want:
                raise ExportError(
                    f"{spec.file}: {kind} {t.name} is {onnx.TensorProto.DataType.Name(tt.elem_type)}"
                    f" {dims}, expected {t.dtype} {t.shape}")


def _finalise(model: onnx.ModelProto, name: str, spec: GraphSpec, precision: str,
              sha: str) -> None:
    check_io(model, spec, float_type=onnx.TensorProto.FLOAT)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{name}: ONNX checker failed: {e}") from None
    errors = errors_of(check_model(model))
    if errors:
        raise ExportError(f"{name}: not TensorRT-compatible: " + "; ".join(map(str, errors)))
    model.graph.name = name
    model.producer_name = "qdmn-deploy export"
    del model.metadata_props[:]
    for k, v in {"graph": name, "precision": precision, "checkpoint_sha256": sha}.items():
        model.metadata_props.add(key=k, value=v)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (node block lists and quantiser exclusions use names)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def check_size(size: Sequence[int]) -> tuple[int, int]:
    """(H, W) as ints, or an ExportError: the sizes graphs can be exported at."""
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ExportError(f"size must be (H, W), got {size!r}") from None
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise ExportError(f"size {height}x{width}: H and W must be positive multiples of "
                          f"{STRIDE} (the features are at 1/{STRIDE} resolution)")
    return height, width


def _checkpoint_size(meta: dict) -> tuple[int, int]:
    size = (meta.get("config") or {}).get("image_size")
    return tuple(size) if size else DEFAULT_SIZE


_GRAPH_FILES = {f"{g}.onnx" for g in GRAPH_NAMES}


def _owned(out_dir: Path) -> set[str]:
    """The files an earlier export wrote into `out_dir`: those its manifest lists."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return set()
    try:
        d = json.loads(path.read_text())
        names = {MANIFEST_NAME}
        for g in d["graphs"].values():
            names.update(n for n in (g["file"], g.get("engine")) if n)
        cache = (d.get("tensorrt") or {}).get("timing_cache")
        if cache and "/" not in cache:
            names.add(cache)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path} is not a manifest written by this exporter ({e}): refusing "
                          "to overwrite it; choose another --out") from None
    return {n for n in names if Path(n).name == n}  # only plain names inside out_dir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=path_arg, help="training checkpoint or official ckpt.pth")
    p.add_argument("--out", type=path_arg, required=True,
                   help="output folder (an earlier export there is replaced; other files kept)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help=f"static input size, multiples of {STRIDE} (default: the checkpoint's "
                        f"image_size, else {DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})")
    p.add_argument("--max-objects", type=int, default=4,
                   help="objects the graphs hold per video (default 4); each costs compute "
                        "in the memory read and the decoder, so export no more than you need")
    p.add_argument("--memory-size", type=int, default=DEFAULT_MEMORY_SIZE,
                   help=f"dynamic memory slots (beta, default {DEFAULT_MEMORY_SIZE})")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="FP16 weights/compute, FP32 I/O")
    prec.add_argument("--int8", action="store_true", help="static QDQ INT8 (needs --calib)")
    p.add_argument("--calib", type=path_arg, help="folder of calibration frames for --int8")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    if args.calib is not None and not args.int8:
        p.error("--calib is only used with --int8")
    try:
        with terminate_as_interrupt():  # SIGTERM removes the staging folder as Ctrl-C does
            m = export_checkpoint(
                args.checkpoint, args.out, size=args.size, max_objects=args.max_objects,
                memory_size=args.memory_size, precision=precision, opset=args.opset,
                calib_frames=args.calib)
    except ExportInterrupted as e:  # too late: the export is whole, which is what was asked
        m = e.manifest
    except KeyboardInterrupt as e:
        print("interrupted: nothing written", file=sys.stderr)
        return interrupt_exit_code(e)
    except (ExportError, CheckpointError, ConfigError, ManifestError, OSError) as e:
        return fail(e)  # OSError: e.g. the temporary folder's disk is full
    if argv is None:  # this process is the exporter's alone
        ignore_interrupts()
    print(json.dumps({"out": str(args.out), "size": [m.height, m.width],
                      "max_objects": m.max_objects, "memory_size": m.memory_size,
                      "precision": m.precision, "graphs": [g.file for g in m.graphs.values()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
