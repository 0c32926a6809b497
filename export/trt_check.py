"""Static TensorRT 10.x compatibility check of an ONNX graph, without TensorRT or a GPU.

TensorRT's own capability check (`polygraphy inspect capability`, the ORT TensorRT EP) needs a
CUDA device, so this checks what the exported graphs depend on against the parser's operator
matrix (`export.trt_ops`) and the restrictions/pitfalls in the TensorRT 10.16 sources and docs
(docs/spec/tensorrt-onnx-ops.md, docs/spec/tensorrt-api-notes.md):

- every op is in the matrix and supported, for the dtype it gets; no custom domains;
- opset within 9..24; graph inputs/outputs fully static; UINT8 only as graph I/O;
- no shape arithmetic left (Shape/Size nodes, or shape-like inputs such as Reshape's shape or
  TopK's K computed at run time): everything must fold to initializers at a static size;
- TopK: K a constant <= 3840 and <= the axis length, axis among the last 4 dims, `sorted`=1,
  at most 2^31-1 elements, not fed by a DequantizeLinear;
- Reduce*/Squeeze/Unsqueeze axes constant; Dropout not in training mode;
- Resize: supported modes, no antialias, linear only on the innermost 3 dims;
- ScatterND/ScatterElements not writing into a graph input, no reduction;
- Q/DQ: constant positive scales, zero points all zero (symmetric INT8), per-channel only on
  weights;
- no inf/NaN constants (a fully -inf-masked softmax row is NaN), no saturated FP16 constants.

Torch-free. CLI: `python export/trt_check.py DIR_OR_ONNX...` (exit 1 if any error).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from export.fp16 import FP16_MAX
from export.trt_ops import MAX_OPSET, MIN_OPSET, ONNX_TYPE_NAMES, OPS, TRT_VERSION
from runtime.cli import fail, path_arg

TOPK_MAX_K = 3840
MAX_VOLUME = 2**31 - 1
RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                     "align_corners")
RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")

# Inputs that TensorRT needs as build-time constants in a static engine (shape-like inputs).
_CONST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Resize": (1, 2, 3), "TopK": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "OneHot": (1,), "CumSum": (1,),
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
}
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
               "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")


@dataclass(frozen=True)
class Issue:
    severity: Literal["error", "warning"]
    node: str  # node name, or "graph"
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.node} ({self.op}): {self.message}"


class TrtCheckError(ValueError):
    """A graph would not build (or would build wrongly) with TensorRT 10.x."""


def errors_of(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]


def assert_compatible(model: onnx.ModelProto | str | Path, what: str = "graph") -> list[Issue]:
    """Raise TrtCheckError listing every error; return the warnings."""
    issues = check_model(model)
    errors = errors_of(issues)
    if errors:
        raise TrtCheckError(f"{what} is not TensorRT {TRT_VERSION}-compatible: "
                            + "; ".join(map(str, errors)))
    return issues


def check_model(model: onnx.ModelProto | str | Path) -> list[Issue]:
    """Every issue found in `model` (a ModelProto or an .onnx path), errors and warnings."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return _Checker(model).run()


class _Checker:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.issues: list[Issue] = []
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - a graph shape inference rejects is still checked
            inferred = model
        g = inferred.graph
        self.graph = g
        self.inputs = {v.name for v in g.input}
        self.outputs = {v.name for v in g.output}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        for v in (*g.input, *g.output, *g.value_info):
            tt = v.type.tensor_type
            self.types[v.name] = tt.elem_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            self.shapes[v.name] = dims if tt.HasField("shape") else None
        self.consts: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
            self.types[init.name] = init.data_type
            self.shapes[init.name] = tuple(init.dims)
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            if n.op_type == "Constant" and n.output:
                value = _constant_value(n)
                if value is not None:
                    self.consts[n.output[0]] = value
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          0)

    def add(self, severity: str, node: onnx.NodeProto | None, message: str) -> None:
        name, op = ("graph", "-") if node is None else (node.name or node.output[0], node.op_type)
        self.issues.append(Issue(severity, name, op, message))  # type: ignore[arg-type]

    def run(self) -> list[Issue]:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            self.add("error", None, f"opset {self.opset} outside TensorRT {TRT_VERSION}'s "
                                    f"{MIN_OPSET}..{MAX_OPSET}")
        self.check_io()
        self.check_constants()
        for n in self.graph.node:
            self.check_node(n)
        return self.issues

    def check_io(self) -> None:
        for kind, values in (("input", self.graph.input), ("output", self.graph.output)):
            for v in values:
                if v.name in self.consts:
                    continue  # an initializer listed as an input (old exporters)
                dims = self.shapes.get(v.name)
                if dims is None or any(d <= 0 for d in dims):
                    self.add("error", None, f"graph {kind} {v.name} has dynamic/unknown dims "
                                            f"{dims}: the engines are built for static shapes")
        data = self._data_dependent()
        for v in self.graph.output:
            if v.name not in data:
                self.add("error", None, f"graph output {v.name} is computed from shapes or "
                                        "constants only (shape arithmetic as an output)")
            elif self.types.get(v.name) in (TensorProto.INT64, TensorProto.INT32):
                self.add("warning", None, f"graph output {v.name} is an integer tensor")
        for name, t in self.types.items():
            if t == TensorProto.UINT8 and name not in self.inputs | self.outputs:
                node = self.producer.get(name)
                if not (node is not None and node.op_type in ("QuantizeLinear",)):
                    self.add("error", node, f"UINT8 tensor {name} inside the graph: TensorRT "
                                            "allows UINT8 only as a network input/output")
            if t == TensorProto.DOUBLE:
                self.add("warning", self.producer.get(name), f"DOUBLE tensor {name}: TensorRT "
                                                             "casts it down to FP32")
            shape = self.shapes.get(name)
            if shape and all(d > 0 for d in shape) and int(np.prod(shape)) > MAX_VOLUME:
                self.add("warning", self.producer.get(name),
                         f"tensor {name} {shape} has more than 2^31-1 elements")

    def _data_dependent(self) -> set[str]:
        """Tensors whose values depend on a graph input's values (not just on its shape)."""
        live = {v.name for v in self.graph.input if v.name not in self.consts}
        for n in self.graph.node:
            if n.op_type not in ("Shape", "Size") and any(i in live for i in n.input if i):
                live.update(n.output)
        return live

    def check_constants(self) -> None:
        has_fp16 = any(t == TensorProto.FLOAT16 for t in self.types.values())
        for name, value in self.consts.items():
            if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                continue
            if not np.all(np.isfinite(value)):
                self.add("error", self.producer.get(name), f"constant {name} holds inf/NaN "
                                                           "(a fully -inf-masked softmax is NaN)")
            elif value.dtype == np.float16 and np.any(np.abs(value) >= FP16_MAX):
                self.add("warning", self.producer.get(name),
                         f"FP16 constant {name} saturates at +-65504 (a -1e9 mask?)")
            elif has_fp16 and value.dtype == np.float32 and np.any(np.abs(value) > FP16_MAX):
                self.add("warning", self.producer.get(name),
                         f"FP32 constant {name} exceeds the FP16 range; it overflows to inf if "
                         "it meets FP16 compute")

    def check_node(self, n: onnx.NodeProto) -> None:
        if n.domain not in ("", "ai.onnx"):
            self.add("error", n, f"custom domain {n.domain!r}: TensorRT would need a plugin")
            return
        if n.op_type in ("Shape", "Size"):
            self.add("error", n, "shape computation left in a static graph (fold it: onnxslim "
                                 "or constant folding at the export size)")
            return
        support = OPS.get(n.op_type)
        if support is None or not support.supported:
            why = "not in" if support is None else "unsupported in"
            self.add("error", n, f"{why} the TensorRT {TRT_VERSION} ONNX parser matrix "
                                 "(would need a plugin)")
            return
        if n.input and n.input[0] and support.types:
            t = self.types.get(n.input[0])
            tname = ONNX_TYPE_NAMES.get(t) if t else None
            if tname is not None and tname not in support.types:
                self.add("error", n, f"input {n.input[0]} is {tname}; TensorRT supports "
                                     f"{n.op_type} for {', '.join(support.types)}")
        if n.op_type in ("Cast", "CastLike"):
            to = _attr(n, "to", None)
            if to is not None and ONNX_TYPE_NAMES.get(to) not in support.types:
                self.add("error", n, f"cast to {ONNX_TYPE_NAMES.get(to, to)} is not supported")
        for i in n.input:
            if i in self.inputs and self.types.get(i) == TensorProto.UINT8 and \
                    n.op_type not in ("Cast", "CastLike", "Identity"):
                self.add("error", n, f"UINT8 input {i} must be Cast before use")
        for idx in _CONST_INPUTS.get(n.op_type, ()) + ((1,) if n.op_type in _REDUCE_OPS else ()):
            if idx < len(n.input) and n.input[idx] and n.input[idx] not in self.consts:
                self.add("error", n, f"input #{idx} ({n.input[idx]}) is computed at run time; "
                                     "TensorRT needs it as a build-time constant (initializer)")
        check = getattr(self, f"check_{n.op_type}", None)
        if check is not None:
            check(n)

    def check_TopK(self, n: onnx.NodeProto) -> None:
        if not _attr(n, "sorted", 1):
            self.add("error", n, "`sorted` must be 1")
        k = self.consts.get(n.input[1]) if len(n.input) > 1 else _attr(n, "k", None)
        shape = self.shapes.get(n.input[0])
        if k is not None:
            k = int(np.asarray(k).reshape(-1)[0])
            if k > TOPK_MAX_K:
                self.add("error", n, f"K={k} > {TOPK_MAX_K}, TensorRT's TopK limit")
            elif k == TOPK_MAX_K:
                self.add("warning", n, f"K={k}: the parser matrix says K must be < {TOPK_MAX_K}")
        if not shape or any(d <= 0 for d in shape):
            self.add("warning", n, f"input {n.input[0]} shape unknown: K/axis limits unchecked")
            return
        rank = len(shape)
        axis = _attr(n, "axis", -1)
        axis = axis + rank if axis < 0 else axis
        if axis < rank - 4:
            self.add("error", n, f"axis {axis} of a rank-{rank} input: TensorRT reduces only "
                                 "over one of the last 4 dims")
        if k is not None and k > shape[axis]:
            self.add("error", n, f"K={k} > axis length {shape[axis]}: the build fails")
        if int(np.prod(shape)) > MAX_VOLUME:
            self.add("error", n, f"input {shape} has more than 2^31-1 elements")
        src = self.producer.get(n.input[0])
        if src is not None and src.op_type == "DequantizeLinear":
            self.add("warning", n, "TopK input comes from a DequantizeLinear: keep the affinity "
                                   "that feeds TopK in float")

    def check_Resize(self, n: onnx.NodeProto) -> None:
        mode = _attr(n, "mode", "nearest")
        ctm = _attr(n, "coordinate_transformation_mode", "half_pixel")
        if mode not in ("nearest", "linear"):
            self.add("error" if mode != "cubic" else "warning", n, f"mode {mode!r}: the matrix "
                                                                   "lists nearest/linear only")
        if ctm not in RESIZE_TRANSFORMS:
            self.add("error", n, f"coordinate_transformation_mode {ctm!r} unsupported")
        if mode == "nearest" and _attr(n, "nearest_mode", "round_prefer_floor") not in \
                RESIZE_NEAREST:
            self.add("error", n, "unsupported nearest_mode")
        if _attr(n, "antialias", 0):
            self.add("error", n, "antialiasing is not supported")
        if _attr(n, "keep_aspect_ratio_policy", "stretch") != "stretch":
            self.add("error", n, "keep_aspect_ratio_policy must be stretch")
        if mode == "linear":
            shape = self.shapes.get(n.input[0])
            scales = self._resize_scales(n, shape)
            if scales is not None and len(scales) > 3 and \
                    any(abs(s - 1.0) > 1e-6 for s in scales[:-3]):
                self.add("error", n, f"linear resize scales {list(scales)}: TensorRT scales "
                                     "only the innermost 3 dims")

    def _resize_scales(self, n: onnx.NodeProto, shape: tuple[int, ...] | None
                       ) -> list[float] | None:
        if len(n.input) > 2 and n.input[2] in self.consts and self.consts[n.input[2]].size:
            return [float(s) for s in self.consts[n.input[2]]]
        if len(n.input) > 3 and n.input[3] in self.consts and shape and all(d > 0 for d in shape):
            return [o / i for o, i in zip(self.consts[n.input[3]], shape)]
        return None

    def check_Dropout(self, n: onnx.NodeProto) -> None:
        if len(n.input) > 2 and n.input[2]:
            mode = self.consts.get(n.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                self.add("error", n, "training_mode must be a constant False")

    def _check_scatter(self, n: onnx.NodeProto) -> None:
        if n.input[0] in self.inputs:
            self.add("error", n, f"scatters into graph input {n.input[0]}: static engines read "
                                 "their inputs; write the update outside the graph")
        reduction = _attr(n, "reduction", "none")
        if reduction != "none":
            self.add("error" if n.op_type == "ScatterND" else "warning", n,
                     f"reduction={reduction!r}: ScatterND rejects it, ScatterElements needs the "
                     "ScatterElements plugin (libnvinfer_plugin)")

    check_ScatterND = check_ScatterElements = check_Scatter = _check_scatter

    def _check_softmax(self, n: onnx.NodeProto) -> None:
        if self.opset < 13:
            self.add("warning", n, "opset < 13: TensorRT flattens the input to 2-D")

    check_Softmax = check_LogSoftmax = check_Hardmax = _check_softmax

    def _check_qdq(self, n: onnx.NodeProto) -> None:
        scale = self.consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is not None and not np.all(scale > 0):
            self.add("error", n, "scales must all be positive")
        if len(n.input) > 2 and n.input[2]:
            zp = self.consts.get(n.input[2])
            if zp is not None and np.any(zp != 0):
                self.add("error", n, "non-zero zero point: TensorRT supports only symmetric "
                                     "quantization")
            if self.types.get(n.input[2]) == TensorProto.UINT8:
                self.add("error", n, "UINT8 zero point: quantize with signed INT8 (TensorRT "
                                     "reinterprets UINT8 as INT8)")
        if scale is not None and scale.size > 1:
            x = n.input[0]
            weight = x in self.consts or (
                n.op_type == "DequantizeLinear" and x in self.producer
                and self.producer[x].op_type == "QuantizeLinear"
                and self.producer[x].input[0] in self.consts)
            if not weight:
                self.add("error", n, "per-channel scales on an activation: TensorRT quantizes "
                                     "activations per-tensor only")
            shape = self.shapes.get(x)
            if shape:
                axis = _attr(n, "axis", 1)
                if shape[axis] != scale.size:
                    self.add("error", n, f"{scale.size} scales for axis {axis} of {shape}")
        if n.op_type == "QuantizeLinear" and self.shapes.get(n.input[0]) == ():
            self.add("error", n, "the input of a QuantizeLinear must not be a scalar")

    check_QuantizeLinear = check_DequantizeLinear = _check_qdq

    def _check_flow(self, n: onnx.NodeProto) -> None:
        self.add("warning", n, "control flow in a static graph: check the subgraph by hand")

    check_Loop = check_If = check_Scan = _check_flow

    def _check_data_dependent(self, n: onnx.NodeProto) -> None:
        self.add("error", n, "output shape depends on the data: not a static engine")

    check_NonZero = check_NonMaxSuppression = _check_data_dependent


def _attr(n: onnx.NodeProto, name: str, default):
    for a in n.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _constant_value(n: onnx.NodeProto) -> np.ndarray | None:
    for a in n.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(a))
    return None


def _graph_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.onnx")) if path.is_dir() else [path]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=path_arg, help=".onnx files or export folders")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    args = p.parse_args(argv)
    failed = False
    for path in args.paths:
        files = _graph_files(path)
        if not files or not all(f.is_file() for f in files):
            return fail(f"no ONNX graph at {path}")
        for f in files:
            issues = check_model(f)
            errors = errors_of(issues)
            failed |= bool(errors)
            print(f"{f}: {'FAIL' if errors else 'ok'} ({len(errors)} errors, "
                  f"{len(issues) - len(errors)} warnings)")
            for i in issues:
                if i.severity == "error" or not args.quiet:
                    print(f"  {i}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
