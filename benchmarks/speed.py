"""Frames per second of PyTorch against the deployed runtime on each backend and precision,
with the time of every stage (where the time goes).

    python benchmarks/speed.py --engine-dir DIR --checkpoint CKPT [--frames 100] [--warmup N]
        [--variants all | torch-fp32,torch-bf16,ort-cpu,ort-cpu-int8,openvino,openvino-bf16,...]
        [--int8-engine-dir DIR | --calib FRAMES_DIR] [--threads T]
        [--input FRAMES_DIR|VIDEO --mask FIRST.png] [--out results]

Every variant segments the same frames (the input played forward and backward, decoded
beforehand) at the engine's resolution, object count and memory bank, with the same number of
threads, through the runtime's Segmenter, so pre/post-processing and the memory policy are
shared and only graph execution differs. The first --warmup frames are not timed (default:
enough for the bank to fill, as in any long video: the PyTorch reference reads only the filled
slots, the exported graphs always read all of them); then --frames frames are timed. Every
candidate frame enters the memory (sigma 0), so the bank is full when timing starts whatever
the weights' quality scores (a random-weights checkpoint's masks are not ones the gate keeps).

    torch-fp32     PyTorch eager FP32: the reference (training/reference.py) on --checkpoint
    torch-bf16     the best a PyTorch user gets on a CPU: bf16 autocast + channels_last
    ort-cpu        ONNX Runtime CPU on --engine-dir (its precision, normally fp32)
    ort-cpu-int8   ONNX Runtime CPU on INT8 QDQ graphs (--int8-engine-dir, or exported from
                   --checkpoint with --calib frames, default the input's frames)
    openvino       OpenVINO CPU on the FP32 graphs, FP32 execution
    openvino-bf16  OpenVINO CPU on the FP32 graphs with the bf16 inference precision hint
    openvino-int8  OpenVINO CPU on the INT8 QDQ graphs
    ort-cuda, trt  GPU backends, where available

A variant that cannot run here (library, GPU or checkpoint missing) is listed with the reason.
Per-stage ms are the Segmenter's own timings (FrameRecord.ms): pre, encoder, memory_read,
decoder, qam (memory encoder + quality head), bank (policy + slot write), post. Writes
OUT/speed.json and OUT/speed.png (stacked per-stage ms per variant) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    Clip,
    add_common_arguments,
    calibration_folder,
    check_checkpoint,
    ensure_engine,
    load_clip,
    machine_info,
    portable_path,
    pyplot,
    table,
    write_json,
)
from runtime.cli import fail, path_arg
from runtime.core.config import default_threads
from runtime.core.memory_policy import ACCEPT_ALL
from runtime.segmenter import STAGES

VARIANTS: dict[str, str] = {
    "torch-fp32": "PyTorch eager FP32 (reference)",
    "torch-bf16": "PyTorch bf16 autocast + channels_last",
    "ort-cpu": "ONNX Runtime CPU",
    "ort-cpu-int8": "ONNX Runtime CPU, INT8 QDQ graphs",
    "openvino": "OpenVINO CPU, FP32",
    "openvino-bf16": "OpenVINO CPU, FP32 graphs, bf16 precision hint",
    "openvino-int8": "OpenVINO CPU, INT8 QDQ graphs",
    "ort-cuda": "ONNX Runtime CUDA",
    "trt": "TensorRT",
}
BASELINE = "torch-fp32"
TORCH_VARIANTS = ("torch-fp32", "torch-bf16")
LABEL_STRIDE = 4  # labels kept for the agreement check are subsampled (memory)


class Skip(Exception):
    """This variant cannot run on this machine / with these inputs (the message says why)."""


@dataclass
class Context:
    """What every variant builder needs."""

    engine_dir: Path
    manifest: Any
    threads: int
    device: int
    checkpoint: Path | None
    int8_dir: Callable[[], Path]  # exports on first use
    spin: bool = False  # ORT CPU threads busy-wait (the runtime's --spin)


def _torch_segmenter(ctx: Context, bf16: bool) -> Any:
    if ctx.checkpoint is None:
        raise Skip("needs --checkpoint")
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed") from None
    from runtime.core.config import RuntimeConfig, check_threads
    from runtime.segmenter import Segmenter
    from training.checkpoint import load_model
    from training.reference import TorchBackend, reference_manifest

    torch.set_num_threads(check_threads(ctx.threads))
    m = ctx.manifest
    model, _ = load_model(ctx.checkpoint)
    ref = reference_manifest(model.cfg, m.height, m.width, m.max_objects, m.memory_size,
                             mem_every=m.mem_every, quality_threshold=m.quality_threshold,
                             checkpoint_sha256=m.checkpoint_sha256)
    if bf16:  # every graph under bf16 autocast, channels_last weights, FP32 outputs
        class Bf16Backend(TorchBackend):
            name = "torch-bf16"

            def _execute(self, graph: str, inputs: dict[str, Any]) -> dict[str, Any]:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return super()._execute(graph, inputs)

        backend = Bf16Backend(model.to(memory_format=torch.channels_last), ref)
    else:
        backend = TorchBackend(model, ref)
    return Segmenter.from_backend(ref, backend, RuntimeConfig(threads=ctx.threads,
                                                              quality_threshold=ACCEPT_ALL))


# ----------------------------------------------------------------------------- runtime ones
def _runtime_segmenter(ctx: Context, backend: str, engine_dir: Path) -> Any:
    """The runtime's Segmenter on `backend` (a runtime backend name), as `run.py` builds it."""
    from runtime.backends import create_backend
    from runtime.core.config import RuntimeConfig
    from runtime.core.errors import BackendUnavailableError
    from runtime.core.manifest import Manifest
    from runtime.segmenter import Segmenter

    manifest = Manifest.load(engine_dir)
    config = RuntimeConfig(threads=ctx.threads, device=ctx.device, spin=ctx.spin,
                           quality_threshold=ACCEPT_ALL).resolve(manifest)
    try:
        be = create_backend(backend, manifest, engine_dir, config)
    except BackendUnavailableError as e:
        raise Skip(str(e)) from None
    return Segmenter.from_backend(manifest, be, config)


# runtime variant -> (runtime backend it is created as, its graphs): "engine" = --engine-dir,
# "fp32" = --engine-dir, which must hold FP32 graphs, "int8" = the INT8 export of the checkpoint
RUNTIME_VARIANTS: dict[str, tuple[str, str]] = {
    "ort-cpu": ("ort-cpu", "engine"), "ort-cpu-int8": ("ort-cpu", "int8"),
    "openvino": ("openvino", "fp32"), "openvino-bf16": ("openvino-bf16", "fp32"),
    "openvino-int8": ("openvino", "int8"), "ort-cuda": ("ort-cuda", "engine"),
    "trt": ("trt", "engine"),
}


def build_variant(name: str, ctx: Context) -> Any:
    """A Segmenter for variant `name`; raises Skip when it cannot run here."""
    if name in TORCH_VARIANTS:
        return _torch_segmenter(ctx, bf16=name == "torch-bf16")
    if name not in RUNTIME_VARIANTS:
        raise BenchmarkError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    backend, graphs = RUNTIME_VARIANTS[name]
    if graphs == "fp32" and ctx.manifest.precision != "fp32":
        raise Skip(f"{name} runs FP32 graphs; --engine-dir is {ctx.manifest.precision}")
    return _runtime_segmenter(ctx, backend, ctx.int8_dir() if graphs == "int8" else ctx.engine_dir)


# -------------------------------------------------------------------------------- measuring
def measure(seg: Any, video: Sequence[np.ndarray], mask: np.ndarray,
            warmup: int) -> dict[str, Any]:
    """Segment `video`: frame 0 and the next `warmup` frames untimed (library warm-up, and the
    memory bank fills as in a long video), the rest timed."""
    from runtime.segmenter import summarize

    seg.start(video[0], mask)
    for frame in video[1:1 + warmup]:
        seg.step(frame)
    held = len(seg.policy)
    records, labels = [], []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for frame in video[1 + warmup:]:
        labels.append(seg.step(frame)[::LABEL_STRIDE, ::LABEL_STRIDE].copy())
        records.append(seg.last_record)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    s = summarize(records)  # all timed records are propagated frames (frame > 0)
    totals = np.array([r.ms["total"] for r in records])
    return {
        "frames": len(records),
        "memory_frames_at_start": held,
        "fps": s["fps"],
        "wall_fps": round(len(records) / wall, 3) if wall > 0 else None,
        "mean_ms": s["mean_ms"],
        # process CPU time (all threads) per frame: robust to other load on a shared machine
        "cpu_ms_per_frame": round(cpu * 1e3 / len(records), 3),
        "ms_p50": round(float(np.median(totals)), 3) if totals.size else None,
        "ms_p90": round(float(np.percentile(totals, 90)), 3) if totals.size else None,
        "insertions": sum(1 for r in records if r.decision and r.decision["accepted"]),
        "labels": labels,
    }


def mean_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float | None:
    """Mean over frames of the mean IoU over the objects present in either map."""
    scores = []
    for x, y in zip(a, b):
        ids = sorted((set(np.unique(x)) | set(np.unique(y))) - {0})
        if ids:
            scores.append(np.mean([((x == i) & (y == i)).sum() / ((x == i) | (y == i)).sum()
                                   for i in ids]))
    return round(float(np.mean(scores)), 4) if scores else None


def run_variants(names: Sequence[str], ctx: Context, clip: Clip, frames: int,
                 warmup: int) -> list[dict[str, Any]]:
    """Measure each variant on the same frames; skipped ones carry `skipped` (the reason)."""
    from runtime.core.errors import QDMNRuntimeError

    video = clip.video(1 + warmup + frames)
    results: list[dict[str, Any]] = []
    baseline_labels = None
    for name in names:
        row: dict[str, Any] = {"variant": name, "description": VARIANTS[name]}
        print(f"running {name}...", file=sys.stderr, flush=True)
        try:
            seg = build_variant(name, ctx)
        except (Skip, QDMNRuntimeError) as e:
            row["skipped"] = str(e).splitlines()[0]
            print(f"  skipped: {row['skipped']}", file=sys.stderr)
            results.append(row)
            continue
        try:
            row["backend"] = seg.backend.describe()
            row["precision"] = _precision(name, seg.manifest)
            row["engine_dir"] = (None if name in TORCH_VARIANTS
                                 else portable_path(_engine_of(name, ctx)))
            m = measure(seg, video, clip.mask, warmup)
        except Exception as e:  # noqa: BLE001 - reported; the other variants still count
            first = (str(e).strip().splitlines() or [""])[0]
            row["failed"] = f"{type(e).__name__}: {first}"
            print(f"  failed: {row['failed']}", file=sys.stderr)
            results.append(row)
            continue
        finally:
            seg.close()
        labels = m.pop("labels")
        if name == BASELINE:
            baseline_labels = labels
        row.update(m)
        row["iou_vs_torch_fp32"] = (None if baseline_labels is None
                                    else mean_iou(baseline_labels, labels))
        print(f"  {row['fps']} fps", file=sys.stderr, flush=True)
        results.append(row)
    _ratios(results)
    return results


def _precision(name: str, manifest: Any) -> str:
    if name == "torch-bf16":
        return "bf16 autocast"
    if name == "openvino-bf16":
        return "fp32 graphs, bf16 exec"
    return manifest.precision


def _engine_of(name: str, ctx: Context) -> Path:
    return ctx.int8_dir() if RUNTIME_VARIANTS[name][1] == "int8" else ctx.engine_dir


def _ratios(results: list[dict[str, Any]]) -> None:
    """Speed-ups against PyTorch FP32 and against the fastest PyTorch variant."""
    fps = {r["variant"]: r["fps"] for r in results if r.get("fps")}
    best_torch = max((fps[v] for v in TORCH_VARIANTS if v in fps), default=None)
    for r in results:
        if not r.get("fps"):
            continue
        base = fps.get(BASELINE)
        r["speedup_vs_torch_fp32"] = round(r["fps"] / base, 3) if base else None
        r["speedup_vs_best_torch"] = round(r["fps"] / best_torch, 3) if best_torch else None


def format_results(results: Sequence[dict[str, Any]]) -> str:
    ran = [r for r in results if "fps" in r]
    headers = ["variant", "precision", "mem", "FPS", "ms/frame", *STAGES, "CPU ms",
               "x fp32 torch", "x best torch", "IoU vs torch"]
    rows = [[r["variant"], r["precision"], r["memory_frames_at_start"], r["fps"],
             r["mean_ms"].get("total"),
             *(r["mean_ms"].get(s) for s in STAGES), r["cpu_ms_per_frame"],
             r.get("speedup_vs_torch_fp32"),
             r.get("speedup_vs_best_torch"), r.get("iou_vs_torch_fp32")] for r in ran]
    text = table(headers, rows)
    for key in ("skipped", "failed"):
        text += "".join(f"\n{key} {r['variant']}: {r[key]}" for r in results if key in r)
    return text


def plot_results(results: Sequence[dict[str, Any]], title: str, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        warnings.warn("matplotlib is not installed: no plot written", stacklevel=2)
        return None
    ran = [r for r in results if "fps" in r]
    if not ran:
        return None
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.55 * len(ran)))
    y = np.arange(len(ran))[::-1]
    left = np.zeros(len(ran))
    colors = plt.get_cmap("tab10").colors
    for i, stage in enumerate(STAGES):
        ms = np.array([r["mean_ms"].get(stage, 0.0) for r in ran])
        ax.barh(y, ms, left=left, color=colors[i % len(colors)], label=stage)
        left += ms
    for yi, r, total in zip(y, ran, left):
        ax.text(total, yi, f" {r['fps']:.1f} fps", va="center", fontsize=8)
    ax.set_yticks(y, [f"{r['variant']}" for r in ran])
    ax.set_xlabel("ms per frame")
    ax.set_xlim(0, left.max() * 1.18 if left.max() > 0 else 1)
    ax.legend(ncol=len(STAGES), fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.12 - 0.3 / len(ran)))
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg, help="exported engine directory")
    p.add_argument("--checkpoint", type=path_arg,
                   help="the engine's checkpoint (PyTorch variants, INT8 export)")
    p.add_argument("--variants", default="all",
                   help=f"'all' or comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--frames", type=int, default=100, help="timed frames per variant")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed frames before timing (default: mem_every x memory_size + 5, "
                        "so the memory bank is full as in a long video)")
    p.add_argument("--int8-engine-dir", type=path_arg, help="INT8 export of the same checkpoint")
    p.add_argument("--calib", type=path_arg,
                   help="calibration frames for the INT8 export (default: the input's frames)")
    p.add_argument("--note", default="", help="what the checkpoint is, recorded in the JSON and "
                   "the plot title (e.g. 'random weights, speed only')")
    add_common_arguments(p)  # --threads (the same for every variant), --input, --out, ...
    args = p.parse_args(argv)
    if args.frames < 2:
        p.error("--frames must be >= 2")
    if args.warmup is not None and args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.max_source_frames < 1:
        p.error("--max-source-frames must be >= 1")
    if args.device < 0:
        p.error("--device must be >= 0")
    return args


def _variant_names(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(VARIANTS)
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise BenchmarkError(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    # The baseline first: the agreement column compares against its labels.
    return sorted(dict.fromkeys(names), key=lambda v: v != BASELINE)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.core.errors import QDMNRuntimeError
    from runtime.core.manifest import Manifest, ManifestError
    from runtime.media.outputs import check_writable_dir

    threads = args.threads or default_threads()
    try:
        with contextlib.ExitStack() as stack:
            names = _variant_names(args.variants)
            check_writable_dir(args.out)
            manifest = Manifest.load(args.engine_dir)
            sha = check_checkpoint(manifest, args.checkpoint) if args.checkpoint else None
            clip = load_clip(args.input, args.mask, args.max_source_frames)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            int8: dict[str, Path] = {}

            int8_failed: list[Skip] = []

            def int8_dir() -> Path:  # exported once, on first use; a failure is remembered
                if int8_failed:
                    raise int8_failed[0]
                if "dir" not in int8:
                    try:
                        int8["dir"] = _int8_engine(args, manifest, clip, tmp, sha)
                    except Skip as e:
                        int8_failed.append(e)
                        raise
                return int8["dir"]

            ctx = Context(args.engine_dir, manifest, threads, args.device, args.checkpoint,
                          int8_dir, spin=args.spin)
            warmup = (manifest.mem_every * manifest.memory_size + 5 if args.warmup is None
                      else args.warmup)
            results = run_variants(names, ctx, clip, args.frames, warmup)
    except (BenchmarkError, ManifestError, QDMNRuntimeError, ValueError, OSError) as e:
        return fail(e)
    machine = machine_info(threads)
    result = {
        "benchmark": "speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "engine": {"dir": portable_path(args.engine_dir), "height": manifest.height,
                   "width": manifest.width, "max_objects": manifest.max_objects,
                   "memory_size": manifest.memory_size, "precision": manifest.precision,
                   "checkpoint_sha256": manifest.checkpoint_sha256,
                   "model_config": manifest.model_config},
        "checkpoint": None if args.checkpoint is None else {
            "path": portable_path(args.checkpoint), "sha256": sha, "note": args.note},
        "input": {"source": clip.source, "mask": clip.mask_path, "playback": "ping-pong"},
        "settings": {"frames": args.frames, "warmup": warmup, "threads": threads,
                     "spin": args.spin,
                     "label_stride_for_iou": LABEL_STRIDE},
        "results": results,
    }
    title = (f"{args.note + ': ' if args.note else ''}"
             f"{manifest.height}x{manifest.width}, {manifest.max_objects} object(s), "
             f"{manifest.memory_size} memory slots, {args.frames} frames, {threads} threads, "
             f"{machine['cpu_model']}")
    print(f"\nSpeed ({title}); ms per propagated frame, mean")
    print(format_results(results))
    written = [write_json(args.out / "speed.json", result)]
    png = plot_results(results, title, args.out / "speed.png")
    written += [png] if png else []
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if any("failed" in r for r in results) else 0


def _int8_engine(args: argparse.Namespace, manifest: Any, clip: Clip, tmp: Path,
                 sha: str | None) -> Path:
    from runtime.core.manifest import Manifest, ManifestError

    if args.int8_engine_dir is not None:
        try:
            m = Manifest.load(args.int8_engine_dir)
        except ManifestError as e:
            raise Skip(str(e)) from None
        if m.precision != "int8":
            raise Skip(f"--int8-engine-dir {args.int8_engine_dir} is {m.precision}")
        if (m.height, m.width, m.max_objects, m.memory_size) != (
                manifest.height, manifest.width, manifest.max_objects, manifest.memory_size):
            raise Skip("--int8-engine-dir has another size/objects/memory than --engine-dir")
        if m.checkpoint_sha256 != manifest.checkpoint_sha256:
            raise Skip("--int8-engine-dir was exported from another checkpoint")
        return args.int8_engine_dir
    if args.checkpoint is None:
        raise Skip("needs --int8-engine-dir, or --checkpoint to export one")
    try:
        import onnx  # noqa: F401 - the exporter's dependencies
        import torch  # noqa: F401
    except ImportError as e:
        raise Skip(f"exporting INT8 needs the train extra ({e})") from None
    from export.errors import ExportError

    calib = args.calib or calibration_folder(clip, tmp)
    print("  exporting INT8 graphs (calibration)...", file=sys.stderr, flush=True)
    try:
        return ensure_engine(args.checkpoint, args.out / "engines",
                             size=(manifest.height, manifest.width),
                             max_objects=manifest.max_objects, memory_size=manifest.memory_size,
                             precision="int8", calib_frames=calib, opset=manifest.opset,
                             sha256=sha)
    except ExportError as e:
        raise Skip(f"INT8 export failed: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
