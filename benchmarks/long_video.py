"""Long-video stability: FPS and memory over thousands of frames, QDMN's bounded memory bank
against the unbounded memory of its predecessors (STM/STCN: every mem_every-th frame is added,
nothing is evicted).

    python benchmarks/long_video.py --engine-dir DIR [--frames 5000] [--memory-sizes 5,10,25,50]
        [--checkpoint CKPT --unbounded [--unbounded-cap-mb 2048] [--unbounded-max-frames N]]
        [--read-scaling 5,10,25,50,100] [--backend auto|ort-cpu|ort-cuda|openvino|trt]
        [--input FRAMES_DIR|VIDEO --mask FIRST.png] [--threads T] [--out results]

The video is the input's frames played forward, backward, forward... (ping-pong, so motion stays
continuous) up to --frames; the default input is the shipped demo clip. Each memory limit beta
runs the runtime's Segmenter with RuntimeConfig(memory_size=beta) on --engine-dir (whose bank
must have >= beta slots; the graphs then compute over the exported bank, so FPS differs little
between betas), or with --per-size-engines on an engine exported for exactly beta slots. The
unbounded baseline is the PyTorch reference (training/reference.py) with a growing memory, on
the engine's checkpoint and resolution, stopped at --unbounded-cap-mb of RSS growth,
--unbounded-max-frames or --unbounded-max-seconds.

Every run is a fresh process, so its RSS and peak RSS are its own. Per run: windowed FPS (time
inside the segmenter, frames are decoded beforehand) and process CPU ms per frame (which other
processes on a shared machine do not move), RSS per frame, memory frames held, and
GPU memory on GPU backends (NVML / nvidia-smi, every --device-every frames). --read-scaling
times the memory_read graph alone for each bank size (exported to a temporary folder: the
graph has no weights, so only the manifest's model config is needed).

Writes OUT/long_video.json, OUT/long_video.png (FPS and RSS growth vs frame index, one line per
run) and OUT/read_scaling.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    DeviceMemory,
    add_common_arguments,
    check_checkpoint,
    ensure_engine,
    load_clip,
    machine_info,
    parse_ints,
    peak_rss_mb,
    portable_path,
    pyplot,
    rss_mb,
    table,
    write_json,
)
from runtime.backends import GPU_BACKENDS
from runtime.cli import fail, path_arg
from runtime.core.config import default_threads
from runtime.core.memory_policy import ACCEPT_ALL
from runtime.options import add_execution_options

DEFAULT_MEMORY_SIZES = (5, 10, 25, 50)
RunKind = Literal["qdmn", "reference", "unbounded"]


@dataclass(frozen=True)
class RunSpec:
    """One long-video run, executed in its own process (picklable)."""

    label: str
    # qdmn: the runtime; reference: PyTorch with the same bank; unbounded: PyTorch, no eviction
    kind: RunKind
    engine_dir: str
    frames: int
    threads: int
    input: str | None
    mask: str | None
    max_source_frames: int
    memory_size: int | None = None
    backend: str = "auto"
    checkpoint: str | None = None
    device: int = 0
    cap_mb: float | None = None  # unbounded: stop when the peak RSS grew this much since...
    cap_from: int = 0  # ...this frame (after the first frames' one-off allocations)
    max_seconds: float | None = None
    quality_gate: bool = False  # unbounded: keep QDMN's quality threshold (default: accept all)
    device_every: int = 100
    spin: bool = False  # ORT CPU threads busy-wait (the runtime's --spin)
    progress: bool = False


# ---------------------------------------------------------------------------------- one run
def _build(spec: RunSpec) -> Any:
    from runtime.core.config import RuntimeConfig
    from runtime.core.manifest import Manifest

    manifest = Manifest.load(spec.engine_dir)
    if spec.kind == "qdmn":
        from runtime.segmenter import Segmenter

        config = RuntimeConfig(memory_size=spec.memory_size, threads=spec.threads,
                               device=spec.device, spin=spec.spin)
        return Segmenter(spec.engine_dir, backend=spec.backend, config=config)
    import torch

    from training.reference import reference_segmenter

    torch.set_num_threads(spec.threads)
    if spec.kind == "reference":
        return reference_segmenter(spec.checkpoint, manifest=manifest,
                                   config=RuntimeConfig(memory_size=spec.memory_size))
    threshold = manifest.quality_threshold if spec.quality_gate else ACCEPT_ALL
    config = RuntimeConfig(mem_every=manifest.mem_every, quality_threshold=threshold)
    return reference_segmenter(spec.checkpoint, size=(manifest.height, manifest.width),
                               max_objects=manifest.max_objects, unbounded=True, config=config)


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Segment the ping-pong video with one configuration; per-frame time and memory."""
    from tqdm import tqdm

    from runtime.segmenter import STAGES

    clip = load_clip(spec.input, spec.mask, spec.max_source_frames)
    seg = _build(spec)
    m = seg.manifest
    h, w = m.feature_size
    slot_mb = m.max_objects * (m.key_dim + m.value_dim) * h * w * 4 / 2**20
    backend = seg.backend.describe()
    gpu = DeviceMemory(spec.device) if backend["name"] in GPU_BACKENDS else None
    n = spec.frames
    ms = np.zeros(n)
    cpu_ms = np.zeros(n)  # process CPU time (all threads): robust to other load on the box
    rss = np.zeros(n)
    held = np.zeros(n, np.int64)  # frames in memory: first + long-term (temp slot excluded)
    stages = dict.fromkeys((*STAGES, "total"), 0.0)
    device_mb: list[tuple[int, float]] = []
    rss0, peak0 = rss_mb(), peak_rss_mb()
    stop = "frames"
    cap_base = (rss0, peak0, 0)
    start = time.perf_counter()
    done = 0
    try:
        for t in tqdm(range(n), disable=not spec.progress, unit="frame", leave=False,
                      desc=spec.label):
            frame = clip.ping_pong(t)
            c0 = time.process_time()
            if t == 0:
                seg.start(frame, clip.mask)
            else:
                seg.step(frame)
            cpu_ms[t] = (time.process_time() - c0) * 1e3
            rec = seg.last_record
            ms[t] = rec.ms["total"]
            if t > 0:
                for k, v in rec.ms.items():
                    stages[k] = stages.get(k, 0.0) + v
            rss[t] = rss_mb()
            held[t] = len(seg.policy)
            done = t + 1
            if gpu is not None and (t % spec.device_every == 0 or t == n - 1):
                mb = gpu.sample_mb()
                if mb is not None:
                    device_mb.append((t, round(mb, 1)))
            if spec.kind == "unbounded":
                if t == min(spec.cap_from, n - 1):
                    cap_base = (rss[t], peak_rss_mb(), t)
                if spec.cap_mb is not None and t > min(spec.cap_from, n - 1):
                    base_rss, base_peak, t_base = cap_base
                    growth = _run_peak(rss[t_base:done], base_peak) - base_rss
                    if growth >= spec.cap_mb:
                        stop = (f"RSS grew {growth:.0f} MB since frame {t_base} >= cap "
                                f"{spec.cap_mb:g} MB")
                        break
                if spec.max_seconds is not None and time.perf_counter() - start > spec.max_seconds:
                    stop = f"time limit {spec.max_seconds:g} s"
                    break
    finally:
        seg.close()
    ms, cpu_ms, rss, held = ms[:done], cpu_ms[:done], rss[:done], held[:done]
    steps = max(done - 1, 1)
    # The runtime's bank is preallocated; the reference's sparse bank holds the written slots
    # (memory frames + the previous frame).
    bank_mb = (np.full(done, m.capacity * slot_mb) if spec.kind == "qdmn"
               else (held + 1) * slot_mb)
    return {
        "label": spec.label,
        "kind": spec.kind,
        "memory_size": spec.memory_size,
        "graph_slots": None if spec.kind == "unbounded" else m.capacity,
        "engine_dir": portable_path(spec.engine_dir),
        "backend": backend,
        "frames_requested": n,
        "frames_run": done,
        "stop_reason": stop,
        "wall_s": round(time.perf_counter() - start, 3),
        "mean_ms": {k: round(v / steps, 3) for k, v in stages.items()},
        "mean_cpu_ms": round(float(cpu_ms[1:].mean()), 3) if done > 1 else None,
        "rss_start_mb": round(rss0, 1),
        "peak_rss_mb": round(_run_peak(rss, peak0), 1),
        "slot_mb": round(slot_mb, 4),
        "per_frame": {
            "ms": [round(float(x), 3) for x in ms],
            "cpu_ms": [round(float(x), 3) for x in cpu_ms],
            "rss_mb": [round(float(x), 1) for x in rss],
            "memory_frames": [int(x) for x in held],
            "bank_mb": [round(float(x), 2) for x in bank_mb],
        },
        "device_mb": device_mb,
    }


def _run_peak(rss: np.ndarray, peak_before: float) -> float:
    """Peak RSS during the run: the kernel's high-water mark once it passed its value from
    before the run (model loading may have set it higher), else the highest sample."""
    peak = peak_rss_mb()
    sampled = float(rss.max()) if rss.size else 0.0
    return max(peak, sampled) if peak > peak_before else sampled


def execute(specs: Sequence[RunSpec], isolate: bool = True
            ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run each spec (in a fresh process unless isolate=False) and print one line per run.

    Returns the finished runs and the failed ones (label + error): a run that fails or whose
    process dies (e.g. killed for memory) does not lose the others. Ctrl-C loses the run in
    progress and skips the rest."""
    results, failed = [], []
    ctx = multiprocessing.get_context("spawn")
    for spec in specs:
        print(f"running {spec.label} ({spec.frames} frames)...", file=sys.stderr, flush=True)
        try:
            if isolate:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    r = pool.submit(run_one, spec).result()
            else:
                r = run_one(spec)
        except KeyboardInterrupt:
            print("interrupted: keeping the finished runs", file=sys.stderr)
            break
        except BrokenProcessPool:
            failed.append({"label": spec.label, "error": "its process died (killed for "
                           "memory? lower --unbounded-cap-mb)"})
            print(f"  failed: {failed[-1]['error']}", file=sys.stderr, flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - reported, and the other runs still count
            failed.append({"label": spec.label, "error": f"{type(e).__name__}: {e}"})
            print(f"  failed: {failed[-1]['error']}", file=sys.stderr, flush=True)
            continue
        fps = _fps(np.asarray(r["per_frame"]["ms"][1:]))
        print(f"  {r['frames_run']} frames, {fps:.1f} fps, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['stop_reason']})", file=sys.stderr, flush=True)
        results.append(r)
    return results, failed


# --------------------------------------------------------------------------------- analysis
def _fps(ms: np.ndarray) -> float:
    total = float(np.sum(ms))
    return len(ms) * 1e3 / total if total > 0 else math.nan


def windowed_fps(ms: Sequence[float], window: int) -> list[tuple[int, float]]:
    """(last frame of the window, FPS) over consecutive windows of propagated frames (1..)."""
    a = np.asarray(ms, float)[1:]
    return [(min(i + window, len(a)), round(_fps(a[i:i + window]), 3))
            for i in range(0, len(a), window)]


def fps_around(ms: Sequence[float], frame: int, window: int) -> float | None:
    """FPS over the `window` frames centred on `frame` (shifted to stay inside the run);
    None when the run did not reach `frame`."""
    span = _window(len(ms), frame, window)
    return None if span is None else round(_fps(np.asarray(ms[span], float)), 3)


def cpu_ms_around(cpu_ms: Sequence[float], frame: int, window: int) -> float | None:
    """Mean process CPU ms per frame over the same window as fps_around: unlike FPS, it does
    not move when other processes take the cores, so it shows a trend on a shared machine."""
    span = _window(len(cpu_ms), frame, window)
    return None if span is None else round(float(np.mean(cpu_ms[span])), 3)


def _window(n: int, frame: int, window: int) -> slice | None:
    if frame > n or n < 2:
        return None
    lo = max(1, min(frame - window // 2, n - window))
    return slice(lo, min(n, lo + window))


def summarize_run(r: dict[str, Any], window: int, warmup: int,
                  report_at: Sequence[int]) -> dict[str, Any]:
    """The table row of one run: FPS at the report points, RSS growth after warm-up, peak."""
    pf = r["per_frame"]
    ms, rss = pf["ms"], pf["rss_mb"]
    w0 = min(warmup, max(len(rss) - 1, 0))
    return {
        "label": r["label"],
        "memory_size": r["memory_size"],
        "graph_slots": r["graph_slots"],
        "frames": r["frames_run"],
        "fps": round(_fps(np.asarray(ms[1:], float)), 3) if len(ms) > 1 else None,
        "fps_at": {str(p): fps_around(ms, p, window) for p in report_at},
        "cpu_ms_at": {str(p): cpu_ms_around(pf["cpu_ms"], p, window) for p in report_at},
        "rss_growth_after_warmup_mb": round(rss[-1] - rss[w0], 1) if rss else None,
        "warmup_frame": w0,
        "peak_rss_mb": r["peak_rss_mb"],
        "memory_frames_end": pf["memory_frames"][-1] if pf["memory_frames"] else None,
        "bank_mb_end": pf["bank_mb"][-1] if pf["bank_mb"] else None,
        "device_mb_end": r["device_mb"][-1][1] if r["device_mb"] else None,
        "stop_reason": r["stop_reason"],
    }


def format_runs(rows: Sequence[dict[str, Any]], report_at: Sequence[int]) -> str:
    headers = ["run", "slots", "frames", *(f"FPS@{p}" for p in report_at),
               *(f"CPU ms@{p}" for p in report_at), "RSS growth MB", "peak RSS MB",
               "mem frames", "bank MB"]
    if any(r["device_mb_end"] is not None for r in rows):
        headers.append("GPU MB")
    body = []
    for r in rows:
        row = [r["label"], r["graph_slots"], r["frames"], *(r["fps_at"][str(p)] for p in report_at),
               *(r["cpu_ms_at"][str(p)] for p in report_at), r["rss_growth_after_warmup_mb"],
               r["peak_rss_mb"], r["memory_frames_end"], r["bank_mb_end"]]
        if "GPU MB" in headers:
            row.append(r["device_mb_end"])
        body.append(row)
    notes = [f"{r['label']} stopped after {r['frames']} frames: {r['stop_reason']}"
             for r in rows if r["stop_reason"] != "frames"]
    return "\n".join([table(headers, body), *notes])


# ----------------------------------------------------------------------------- read scaling
def read_scaling(manifest: Any, betas: Sequence[int], backend: str, threads: int, iters: int,
                 device_id: int = 0, workdir: Path | None = None,
                 spin: bool = False) -> dict[str, Any]:
    """ms per memory_read for banks of beta + 2 slots, all valid (the steady state).

    The graph is exported per beta from the manifest's model config (memory_read has no
    weights, so a fresh model traces the same graph) and timed on `backend` with its inputs
    already in place (ORT IO binding), plus the PyTorch function as the reference runs it."""
    import torch

    from export.to_onnx import export_graph
    from training.config import ModelConfig
    from training.graphs import build_graphs, specs_for
    from training.model import QDMN, memory_readout

    if not manifest.model_config:
        raise BenchmarkError("the manifest records no model config: re-export the engine")
    engine = _read_backend(backend)
    model = QDMN(ModelConfig.from_dict(manifest.model_config)).eval()
    graph = build_graphs(model, manifest.height, manifest.width)["memory_read"]
    h, w = manifest.feature_size
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for beta in betas:
            spec = specs_for(model, manifest.height, manifest.width, manifest.max_objects,
                             beta)["memory_read"]
            path = Path(tmp) / f"memory_read_{beta}.onnx"
            path.write_bytes(export_graph(graph, spec, manifest.opset).SerializeToString())
            feeds = {t.name: (np.ones(t.shape, np.float32) if t.name == "mem_valid" else
                              rng.standard_normal(t.shape, dtype=np.float32))
                     for t in spec.inputs}
            out = spec.outputs[0]
            times = _time_graph(engine, path, feeds, out.name, out.shape, threads, iters,
                                device_id, spin)
            tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
            # the reference function on the same memory in its own layout (views)
            keys, values = (tfeeds[t].permute(1, 0, 3, 2).unflatten(3, (h, w))[None]
                            for t in ("mem_keys", "mem_values"))
            with torch.inference_mode():
                ttimes = _time_calls(lambda f=tfeeds, k=keys, v=values: memory_readout(
                    f["query_key"], k, v, f["mem_valid"][None], model.cfg.top_k), iters)
            s = spec.input("mem_keys").shape[1]
            rows.append({
                "memory_size": beta, "slots": s,
                "bank_mb": round((int(np.prod(spec.input("mem_keys").shape)) +
                                  int(np.prod(spec.input("mem_values").shape))) * 4 / 2**20, 2),
                "ms_median": round(float(np.median(times)), 4),
                "ms_p90": round(float(np.percentile(times, 90)), 4),
                "torch_ms_median": round(float(np.median(ttimes)), 4),
            })
            print(f"  memory_read beta={beta}: {rows[-1]['ms_median']:.3f} ms ({engine}), "
                  f"{rows[-1]['torch_ms_median']:.3f} ms (torch)", file=sys.stderr, flush=True)
    return {"engine": engine, "iters": iters, "threads": threads, "spin": spin, "rows": rows,
            "size": [manifest.height, manifest.width], "max_objects": manifest.max_objects}


def _read_backend(backend: str) -> str:
    """The library memory_read is timed with: the runtime's (the OpenVINO backends run it on
    ORT CPU), except TensorRT (needs a build per size), for which ORT CUDA stands in."""
    if backend in ("ort-cpu", "openvino", "openvino-bf16"):
        return "ort-cpu"
    try:
        import onnxruntime as ort
    except ImportError:
        raise BenchmarkError("--read-scaling needs onnxruntime") from None
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if backend in ("ort-cuda", "trt") and not cuda:
        raise BenchmarkError(f"--read-scaling on {backend} needs onnxruntime-gpu")
    if backend == "auto":
        return "ort-cuda" if cuda else "ort-cpu"
    return "ort-cuda"


def _time_calls(fn: Any, iters: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _time_graph(engine: str, path: Path, feeds: dict[str, np.ndarray], out_name: str,
                out_shape: tuple[int, ...], threads: int, iters: int,
                device_id: int, spin: bool = False) -> list[float]:
    import onnxruntime as ort

    from runtime.backends.ort import session_options

    device = "cuda" if engine == "ort-cuda" else "cpu"
    so = session_options(threads, spin=spin)  # the runtime's settings
    providers = ([("CUDAExecutionProvider", {"device_id": device_id})]
                 if device == "cuda" else []) + ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    binding = sess.io_binding()
    keep = []  # the OrtValues must outlive the binding
    for name, a in feeds.items():
        v = ort.OrtValue.ortvalue_from_numpy(a, device, device_id)
        keep.append(v)
        binding.bind_ortvalue_input(name, v)
    out = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32, device,
                                                    device_id)
    binding.bind_ortvalue_output(out_name, out)
    return _time_calls(lambda: sess.run_with_iobinding(binding), iters)


def format_read_scaling(rs: dict[str, Any]) -> str:
    return table(["beta", "slots", "bank MB", f"{rs['engine']} ms", "p90 ms", "torch ms"],
                 [[r["memory_size"], r["slots"], r["bank_mb"], r["ms_median"], r["ms_p90"],
                   r["torch_ms_median"]] for r in rs["rows"]])


# ------------------------------------------------------------------------------------ plots
def plot_runs(runs: Sequence[dict[str, Any]], window: int, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        warnings.warn("matplotlib is not installed: no plot written", stacklevel=2)
        return None
    fig, (ax_fps, ax_mem) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    for r in runs:
        pts = windowed_fps(r["per_frame"]["ms"], window)
        style = "--" if r["kind"] != "qdmn" else "-"
        if pts:
            x, y = zip(*pts)
            ax_fps.plot(x, y, style, label=r["label"])
        rss = np.asarray(r["per_frame"]["rss_mb"])
        ax_mem.plot(np.arange(len(rss)), rss - rss[0], style, label=r["label"])
    ax_fps.set_ylabel(f"FPS ({window}-frame windows)")
    ax_fps.set_ylim(bottom=0)
    ax_fps.grid(alpha=0.3)
    ax_fps.legend(fontsize=8)
    ax_mem.set_ylabel("RSS - RSS at frame 0 (MB)")
    ax_mem.set_xlabel("frame index")
    ax_mem.grid(alpha=0.3)
    fig.suptitle("Long video: QDMN bounded memory vs unbounded memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_read_scaling(rs: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    b = [r["memory_size"] for r in rs["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, [r["ms_median"] for r in rs["rows"]], "o-", label=f"{rs['engine']} graph")
    ax.plot(b, [r["torch_ms_median"] for r in rs["rows"]], "s--", label="PyTorch")
    ax.set_xlabel("memory size beta (dynamic slots)")
    ax.set_ylabel("ms per memory read")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    h, w = rs["size"]
    ax.set_title(f"memory_read cost vs beta ({h}x{w}, {rs['max_objects']} object(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg, help="exported engine directory")
    p.add_argument("--checkpoint", type=path_arg,
                   help="the engine's checkpoint (needed by --unbounded, --reference-bounded, "
                        "--per-size-engines)")
    p.add_argument("--frames", type=int, default=5000, help="length of the long video")
    p.add_argument("--memory-sizes", default=None,
                   help="comma-separated memory limits beta, or 'none' (default: those of "
                        f"{','.join(map(str, DEFAULT_MEMORY_SIZES))} the engine's bank holds)")
    p.add_argument("--per-size-engines", action="store_true",
                   help="export an engine with exactly beta slots per limit (cached in "
                        "OUT/engines) instead of limiting the given engine's bank")
    p.add_argument("--unbounded", action="store_true",
                   help="also run the PyTorch reference with an unbounded memory")
    p.add_argument("--unbounded-cap-mb", type=float, default=2048,
                   help="stop the unbounded run when its peak RSS grew this much since frame "
                        "--warmup (0: no cap)")
    p.add_argument("--unbounded-max-frames", type=int, help="(default: --frames)")
    p.add_argument("--unbounded-max-seconds", type=float, default=1800)
    p.add_argument("--unbounded-quality-gate", action="store_true",
                   help="unbounded memory that keeps QDMN's quality threshold (default: every "
                        "mem_every-th frame, as STM/STCN)")
    p.add_argument("--reference-bounded", action="store_true",
                   help="also run the PyTorch reference with the largest beta (same-library "
                        "control for the unbounded run)")
    p.add_argument("--read-scaling", default=None, metavar="B1,B2,...",
                   help="time memory_read alone for these memory sizes")
    p.add_argument("--read-iters", type=int, default=30)
    add_execution_options(p, ("backend",))
    add_common_arguments(p)
    p.add_argument("--window", type=int, default=50, help="frames per FPS window")
    p.add_argument("--warmup", type=int, default=100,
                   help="RSS growth (and the unbounded cap) is measured from this frame on")
    p.add_argument("--report-at", default="100,1000,5000",
                   help="frames whose windowed FPS the table shows")
    p.add_argument("--device-every", type=int, default=100, help="GPU memory sample period")
    p.add_argument("--in-process", action="store_true",
                   help="run everything in this process (RSS then mixes the runs)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("frames", "read_iters", "max_source_frames", "window", "device_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    for name in ("threads", "unbounded_max_frames"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.device < 0:
        p.error("--device must be >= 0")
    for name in ("unbounded_cap_mb", "unbounded_max_seconds"):  # 0: no limit
        if not math.isfinite(getattr(args, name)) or getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be a number >= 0 (0: no limit)")
    needs_ckpt = [f for f, on in (("--unbounded", args.unbounded),
                                  ("--reference-bounded", args.reference_bounded),
                                  ("--per-size-engines", args.per_size_engines)) if on]
    if needs_ckpt and args.checkpoint is None:
        p.error(f"{', '.join(needs_ckpt)} need(s) --checkpoint (the engine's checkpoint)")
    return args


def _memory_sizes(args: argparse.Namespace, manifest: Any) -> list[int]:
    if args.memory_sizes is not None and args.memory_sizes.strip().lower() == "none":
        return []
    if args.memory_sizes is None:
        sizes = [b for b in DEFAULT_MEMORY_SIZES
                 if args.per_size_engines or b <= manifest.memory_size]
        return sizes or [manifest.memory_size]
    sizes = parse_ints(args.memory_sizes, "--memory-sizes")
    too_big = [b for b in sizes if b > manifest.memory_size]
    if too_big and not args.per_size_engines:
        raise BenchmarkError(
            f"--memory-sizes {too_big} exceed the {manifest.memory_size} slots {args.engine_dir} "
            "was exported with: add --per-size-engines --checkpoint CKPT, or re-export with "
            f"`python export/to_onnx.py CKPT --memory-size {max(sizes)}`")
    return sizes


def plan(args: argparse.Namespace, manifest: Any, threads: int) -> list[RunSpec]:
    """The runs to execute; exports per-size engines first when asked."""
    common = {"frames": args.frames, "threads": threads,
              "input": None if args.input is None else str(args.input),
              "mask": None if args.mask is None else str(args.mask),
              "max_source_frames": args.max_source_frames, "device": args.device,
              "device_every": args.device_every, "spin": args.spin,
              "progress": not args.no_progress and sys.stderr.isatty()}
    specs = []
    sizes = _memory_sizes(args, manifest)
    for beta in sizes:
        engine = args.engine_dir
        if args.per_size_engines and beta != manifest.memory_size:
            print(f"exporting an engine with {beta} slots...", file=sys.stderr, flush=True)
            if manifest.precision == "int8":
                raise BenchmarkError("--per-size-engines exports fp32/fp16 only: pass an fp32 "
                                     "engine")
            engine = ensure_engine(args.checkpoint, args.out / "engines",
                                   size=(manifest.height, manifest.width),
                                   max_objects=manifest.max_objects, memory_size=beta,
                                   precision=manifest.precision, opset=manifest.opset)
        specs.append(RunSpec(label=f"QDMN beta={beta}", kind="qdmn", engine_dir=str(engine),
                             memory_size=beta, backend=args.backend, **common))
    if args.reference_bounded:
        beta = max(sizes) if sizes else manifest.memory_size
        specs.append(RunSpec(label=f"PyTorch beta={min(beta, manifest.memory_size)}",
                             kind="reference", engine_dir=str(args.engine_dir),
                             memory_size=min(beta, manifest.memory_size),
                             checkpoint=str(args.checkpoint), **common))
    if args.unbounded:
        frames = min(args.unbounded_max_frames or args.frames, args.frames)
        specs.append(RunSpec(
            label="PyTorch unbounded", kind="unbounded", engine_dir=str(args.engine_dir),
            checkpoint=str(args.checkpoint), cap_mb=args.unbounded_cap_mb or None,
            cap_from=args.warmup,
            max_seconds=args.unbounded_max_seconds or None,
            quality_gate=args.unbounded_quality_gate, **{**common, "frames": frames}))
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.core.errors import QDMNRuntimeError
    from runtime.core.manifest import Manifest, ManifestError
    from runtime.media.outputs import check_writable_dir

    threads = args.threads or default_threads()
    try:
        check_writable_dir(args.out)  # before hours of running, not after
        manifest = Manifest.load(args.engine_dir)
        sha = check_checkpoint(manifest, args.checkpoint) if args.checkpoint else None
        report_at = [p for p in parse_ints(args.report_at, "--report-at") if p <= args.frames]
        report_at = report_at or [args.frames]
        betas = parse_ints(args.read_scaling, "--read-scaling") if args.read_scaling else []
        clip = load_clip(args.input, args.mask, 1)  # fail early on a bad input or mask
        specs = plan(args, manifest, threads)
        if not specs and not betas:
            raise BenchmarkError("nothing to run: give --memory-sizes, --unbounded or "
                                 "--read-scaling")
        runs, failed = execute(specs, isolate=not args.in_process)
        rs = None
        if betas:
            print("timing memory_read...", file=sys.stderr, flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            rs = read_scaling(manifest, betas, args.backend, threads, args.read_iters,
                              args.device, workdir=args.out, spin=args.spin)
    except (BenchmarkError, ManifestError, QDMNRuntimeError, ValueError, OSError) as e:
        return fail(e)
    rows = [summarize_run(r, args.window, args.warmup, report_at) for r in runs]
    result = {
        "benchmark": "long_video",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(threads),
        "engine": {"dir": portable_path(args.engine_dir), "height": manifest.height,
                   "width": manifest.width, "max_objects": manifest.max_objects,
                   "memory_size": manifest.memory_size, "precision": manifest.precision,
                   "mem_every": manifest.mem_every,
                   "quality_threshold": manifest.quality_threshold,
                   "checkpoint_sha256": manifest.checkpoint_sha256,
                   "model_config": manifest.model_config},
        "checkpoint": None if args.checkpoint is None else {
            "path": portable_path(args.checkpoint), "sha256": sha},
        "input": {"source": clip.source, "mask": clip.mask_path, "playback": "ping-pong",
                  "max_source_frames": args.max_source_frames},
        "settings": {"frames": args.frames, "window": args.window, "warmup": args.warmup,
                     "report_at": report_at, "backend": args.backend,
                     "per_size_engines": args.per_size_engines,
                     "unbounded_cap_mb": args.unbounded_cap_mb,
                     "unbounded_quality_gate": args.unbounded_quality_gate,
                     "isolated_processes": not args.in_process},
        "summary": rows,
        "runs": runs,
        "failed": failed,
        "read_scaling": rs,
    }
    out = args.out
    written = [write_json(out / "long_video.json", result)]
    if runs:
        print(f"\nLong video ({args.frames} frames, {manifest.height}x{manifest.width}, "
              f"{runs[0]['backend']['name']} / {threads} threads; FPS in {args.window}-frame "
              f"windows, RSS growth from frame {rows[0]['warmup_frame']})")
        print(format_runs(rows, report_at))
        if any(r["graph_slots"] and r["memory_size"] and r["graph_slots"] != r["memory_size"] + 2
               for r in rows):
            print("note: 'slots' is the bank the graphs compute over; betas below it only "
                  "limit the policy (use --per-size-engines for per-beta compute)")
        png = plot_runs(runs, args.window, out / "long_video.png")
        written += [png] if png else []
    if rs is not None:
        print(f"\nmemory_read alone ({manifest.height}x{manifest.width}, "
              f"{manifest.max_objects} object(s), {threads} threads, median of {args.read_iters})")
        print(format_read_scaling(rs))
        png = plot_read_scaling(rs, out / "read_scaling.png")
        written += [png] if png else []
    for f in failed:
        print(f"failed: {f['label']}: {f['error']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
