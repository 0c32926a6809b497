"""FP32 -> FP16 graph conversion with explicit Casts and FP32 graph I/O.

Why not onnxruntime.transformers.float16 / onnxconverter-common: with a node block list they
round every blocked node's output to FP16 and cast it back, so a chain of "FP32" nodes still
loses FP16 precision between nodes. Here every node runs in one dtype (FP16, or FP32 if named
in `keep_fp32`) and a Cast is inserted only where a tensor crosses from one to the other, so a
strongly typed TensorRT build (types from the graph, no precision flags) runs exactly this.

Initializers used only by FP16 nodes are stored in FP16 (clipped to +-65504); graph inputs and
outputs keep their FP32 type (a Cast right after each input / before each output).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = 65504.0
# (op, input index) that the ONNX spec types as float32 whatever the data type is.
_ALWAYS_FP32_INPUTS = {("Resize", 1), ("Resize", 2)}


def convert_to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of `model` computing in FP16, except the nodes named in `keep_fp32`."""
    model = _constants_to_initializers(model)
    keep = set(keep_fp32)
    inferred = onnx.shape_inference.infer_shapes(model)
    g_in = inferred.graph
    is_float = {v.name for v in (*g_in.input, *g_in.output, *g_in.value_info)
                if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    is_float |= {t.name for t in g_in.initializer if t.data_type == TensorProto.FLOAT}

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = list(g.node)

    def half(node: onnx.NodeProto) -> bool:
        return node.name not in keep

    def float_inputs(node: onnx.NodeProto) -> list[int]:
        if node.op_type in ("Cast", "CastLike"):
            return []  # Cast takes any type
        return [i for i, name in enumerate(node.input)
                if name in is_float and (node.op_type, i) not in _ALWAYS_FP32_INPUTS]

    # Initializers read only by FP16 nodes are stored in FP16; others stay FP32 (Cast added).
    readers: dict[str, list[bool]] = {}
    for n in nodes:
        for i in float_inputs(n):
            readers.setdefault(n.input[i], []).append(half(n))
    dtype: dict[str, int] = {}  # current element type of every float tensor
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            r = readers.get(t.name, [])
            if r and all(r):
                arr = np.clip(numpy_helper.to_array(t), -FP16_MAX, FP16_MAX).astype(np.float16)
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
                dtype[t.name] = TensorProto.FLOAT16
            else:
                dtype[t.name] = TensorProto.FLOAT
    for v in g.input:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            dtype[v.name] = TensorProto.FLOAT

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{name}__{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to,
                                              name=f"{name}__cast_{suffix}"))
        return casts[key]

    for n in nodes:
        want = TensorProto.FLOAT16 if half(n) else TensorProto.FLOAT
        for i in float_inputs(n):
            if dtype.get(n.input[i], TensorProto.FLOAT) != want:
                n.input[i] = cast(n.input[i], want)
        if n.op_type == "Cast":
            to = next(a for a in n.attribute if a.name == "to")
            if to.i == TensorProto.FLOAT:
                to.i = want
        elif n.op_type == "ConstantOfShape" and want == TensorProto.FLOAT16:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(
                        numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        for o in n.output:
            if o in is_float:
                dtype[o] = want
        new_nodes.append(n)

    # Graph outputs keep FP32: the FP16 producer's tensor is renamed, a Cast restores the name.
    renamed = {}
    for v in g.output:
        if dtype.get(v.name) == TensorProto.FLOAT16:
            renamed[v.name] = f"{v.name}__fp16"
    for n in new_nodes:
        for k, name in enumerate(n.output):
            if name in renamed:
                n.output[k] = renamed[name]
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]
    for name, src in renamed.items():
        new_nodes.append(helper.make_node("Cast", [src], [name], to=TensorProto.FLOAT,
                                          name=f"{name}__cast_fp32"))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return out


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes with a tensor value become initializers (one place to convert them)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = []
    for n in m.graph.node:
        value = next((a.t for a in n.attribute if a.name == "value"), None)
        if n.op_type == "Constant" and value is not None and len(n.attribute) == 1:
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
    return m
