"""Static INT8 (QDQ) quantisation calibrated on real frames: the format TensorRT builds as
explicit INT8.

Calibration runs the FP32 graphs as the runtime would (first frame -> memory, then encoder ->
memory_read -> decoder per frame, the prediction fed back as prev_prob and into the memory
every `mem_every` frames), so encoder, qam and decoder see realistic inputs, including the
decoder's readouts. The first frame's object masks are synthetic ellipses (calibration folders
hold frames only); what matters for calibration is the activation range, not the labels.

Quantised: Conv and Gemm, weights per output channel, activations per tensor, both symmetric
INT8 with zero points 0 (TensorRT supports only symmetric Q/DQ), biases left in float (a
DequantizeLinear of an INT32 bias is not in TensorRT's matrix). Left in float: memory_read
entirely (its only matmuls are activation x activation and feed top-k: INT8 keys reorder the
top-k and cost accuracy for little speed) and the decoder's sigmoid/soft aggregation (no
quantisable ops).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from export.errors import ExportError
from runtime.core.errors import InputError
from runtime.core.manifest import GraphSpec
from runtime.core.memory_policy import DEFAULT_MEM_EVERY, FIXED_SLOTS
from runtime.media import sources

QUANTISED_GRAPHS = ("encoder", "qam", "quality", "decoder")
MAX_SEQUENCES = 4
FRAMES_PER_SEQUENCE = 8


def find_frames(folder: str | Path, max_sequences: int = MAX_SEQUENCES,
                frames_per_sequence: int = FRAMES_PER_SEQUENCE) -> list[list[Path]]:
    """Calibration sequences: the images in `folder`, or else in each of its subfolders
    (e.g. DAVIS JPEGImages/480p). Consecutive frames, so the memory chain is realistic."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"calibration folder not found: {folder}")

    own = sources.frame_files(folder)
    seqs = [own] if own else [sources.frame_files(d) for d in sorted(folder.iterdir()) if d.is_dir()]
    seqs = [s[:frames_per_sequence] for s in seqs if len(s) >= 2][:max_sequences]
    if not seqs:
        raise ExportError(f"no calibration frames (at least 2 {'/'.join(sources.FRAME_EXTS)} "
                          f"images in a folder) in {folder}")
    return seqs


def calibration_frame(path: Path, height: int, width: int) -> np.ndarray:
    """(1, H, W, 3) uint8 RGB, resized like the runtime resizes (INTER_AREA)."""
    try:
        rgb = sources.read_frame(path)
    except InputError as e:
        raise ExportError(f"calibration: {e}") from None
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)[None]


def synthetic_masks(n: int, height: int, width: int) -> np.ndarray:
    """(N, H, W) float32: object k is an ellipse, the objects spread along the diagonal."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    masks = np.zeros((n, height, width), np.float32)
    for k in range(n):
        cy, cx = height * (k + 1) / (n + 1), width * (k + 1) / (n + 1)
        ry, rx = height / (2 * n + 2), width / (2 * n + 2)
        masks[k] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
    return masks


def calibration_feeds(graphs: dict[str, onnx.ModelProto], specs: dict[str, GraphSpec],
                      sequences: Sequence[Sequence[Path]], mem_every: int = DEFAULT_MEM_EVERY,
                      collect: Sequence[str] = QUANTISED_GRAPHS
                      ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the FP32 graphs over each sequence; return the inputs every graph received."""
    import onnxruntime as ort

    from runtime.backends.ort import session_options

    so = session_options()
    sess = {name: ort.InferenceSession(m.SerializeToString(), so,
                                       providers=["CPUExecutionProvider"])
            for name, m in graphs.items()}
    feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in collect}
    _, height, width, _ = specs["encoder"].input("image").shape
    n = specs["encoder"].input("prev_prob").shape[0]
    key_shape = specs["memory_read"].input("mem_keys").shape  # (N, S, P, CK)
    value_shape = specs["memory_read"].input("mem_values").shape
    s = key_shape[1]

    def run(name: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if name in feeds:
            feeds[name].append(feed)
        return sess[name].run(None, feed)

    def memorise(image: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """qam (+ quality, for its calibration) -> the frame's (N, P, C) keys and values."""
        *chunks, features = run("qam", {"image": image, "masks": prob})
        run("quality", {"quality_features": features})
        return np.stack(chunks[:n]), np.stack(chunks[n:])

    for seq in sequences:
        keys = np.zeros(key_shape, np.float32)
        values = np.zeros(value_shape, np.float32)
        valid = np.zeros((s,), np.float32)
        image = calibration_frame(seq[0], height, width)
        prob = synthetic_masks(n, height, width)
        keys[:, 0], values[:, 0] = memorise(image, prob)
        valid[0] = 1
        next_slot = 1
        for t, path in enumerate(seq[1:], start=1):
            image = calibration_frame(path, height, width)
            qk, qv, f8, f4 = run("encoder", {"image": image, "prev_prob": prob})
            (readout,) = run("memory_read", {"query_key": qk, "mem_keys": keys,
                                             "mem_values": values, "mem_valid": valid})
            (full,) = run("decoder", {"readout": readout, "query_value": qv, "f8": f8,
                                      "f4": f4, "object_valid": np.ones((n,), np.float32)})
            prob = np.ascontiguousarray(full[1:])
            k, v = memorise(image, prob)
            slot = s - 1  # the previous frame's temporary slot
            if t % mem_every == 0:
                slot, next_slot = next_slot, next_slot % (s - FIXED_SLOTS) + 1
            keys[:, slot], values[:, slot], valid[slot] = k, v, 1
    return feeds


def quantize_graphs(graphs: dict[str, onnx.ModelProto], specs: dict[str, GraphSpec],
                    calib_frames: str | Path, workdir: str | Path | None = None,
                    which: Sequence[str] = QUANTISED_GRAPHS) -> dict[str, onnx.ModelProto]:
    """QDQ-quantise `which` graphs of the FP32 `graphs`; the others are returned unchanged."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[dict[str, np.ndarray]]):
            self.items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    feeds = calibration_feeds(graphs, specs, find_frames(calib_frames), collect=which)
    out = dict(graphs)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs "consider pre-processing" on the root logger
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            for name in which:
                src, dst = Path(d) / f"{name}.fp32.onnx", Path(d) / f"{name}.int8.onnx"
                onnx.save(graphs[name], str(src))
                quantize_static(
                    str(src), str(dst), Reader(feeds[name]), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Gemm"], per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False},
                )
                out[name] = onnx.load(str(dst))
    finally:
        root.setLevel(level)
    return out
