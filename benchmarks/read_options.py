"""Ways to run QDMN's exact top-k memory read, timed on a real full memory bank.

    python benchmarks/read_options.py --engine-dir DIR [--threads 2] [--iters 20]
        [--input FRAMES_DIR|VIDEO --mask FIRST.png] [--out results]

The bank comes from running the runtime (ORT CPU) on the input until every slot is full; the
query is the next frame's. Every option below computes the same readout as
training.model.memory_readout (checked here to 1e-4) and is exported to ONNX at the engine's
shapes, then timed with its inputs bound in place (wall ms with --threads, CPU ms per call):

    gather-elements     the previous graph: bank (S,N,C,h,w), transposed per frame, top-k
                        values gathered by GatherElements with an int64 index over all channels
    keys-transposed     bank (S,N,P,C): keys reordered per frame into one GEMM per object,
                        values gathered by row
    two-stage-topk      bank (S,N,P,C), nothing transposed: GEMM + TopK per slot, then TopK
                        over the S*k candidates
    block-max-topk      deployed layout: the k blocks with the largest maxima, then TopK over
                        their elements (exact: no other block holds a top-k element)
    deployed            training/memory_read.py: bank (N,S,P,C), one GEMM per object, one TopK,
                        row gather (ONNX Runtime; also on OpenVINO)
    keys-prescaled      deployed, with 1/sqrt(CK) applied to the keys at insertion instead of
                        to the query per frame (the only per-key term of a dot-product affinity)
    no-slot-bias        deployed without the invalid-slot bias: NOT exact, the bias's cost

and it times the deployed read's parts alone on ONNX Runtime (`parts`): the GEMM + TopK without
the softmax and row gather, and the TopK alone on a precomputed affinity, so the deployed time
splits into GEMM, TopK and the rest.

It also reports how often a bf16 affinity (query and keys rounded to bf16, as a bf16 GEMM
would) selects other positions than the FP32 one. Writes OUT/read_options.json and prints the
table.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BenchmarkError,
    add_common_arguments,
    default_threads,
    load_clip,
    machine_info,
    portable_path,
    table,
    write_json,
)
from runtime.cli import fail, path_arg

Memory = dict[str, np.ndarray]  # query_key (1,CK,h,w), mem_keys/mem_values (N,S,P,C), mem_valid


def real_memory(engine_dir: Path, clip: Any, threads: int) -> Memory:
    """Run the runtime long enough to fill the bank (mem_every x memory_size frames, every
    candidate accepted with a trained QAM); return the next frame's read inputs."""
    from runtime.core.config import RuntimeConfig
    from runtime.core.resize import resize_frame
    from runtime.segmenter import Segmenter

    seg = Segmenter(engine_dir, backend="ort-cpu", config=RuntimeConfig(threads=threads))
    m = seg.manifest
    n_frames = m.mem_every * m.memory_size + 6
    seg.start(clip.ping_pong(0), clip.mask)
    for t in range(1, n_frames):
        seg.step(clip.ping_pong(t))
    be = seg.backend
    be.run("encoder", {"image": resize_frame(clip.ping_pong(n_frames), m.height, m.width)[None],
                       "prev_prob": seg._prev_prob})
    bank = be.bank
    phys = np.argsort(bank.physical)  # the ORT bank's physical slot order -> logical
    mem = {"query_key": be.values["query_key"].numpy(),
           "mem_keys": bank.tensors["mem_keys"].numpy()[:, phys].copy(),
           "mem_values": bank.tensors["mem_values"].numpy()[:, phys].copy(),
           "mem_valid": bank.valid}
    seg.close()
    return mem


# ---------------------------------------------------------------------------------- options
def options(top_k: int, slots: int, h: int, w: int
            ) -> dict[str, tuple[Callable[..., Any], str]]:
    """name -> (torch function of the read inputs in that option's layout, layout)."""
    import torch
    import torch.nn.functional as F

    from training.memory_read import banked_memory_read
    from training.model import INVALID_SLOT_BIAS, memory_readout

    def bias_of(valid: Any, s: int, p: int) -> Any:
        return ((1.0 - valid) * INVALID_SLOT_BIAS).view(s, 1).expand(s, p)

    def weighted_rows(top: Any, rows: Any, table_: Any, n: int, p: int) -> Any:
        cv = table_.shape[-1]
        picked = table_.reshape(-1, cv)[rows.reshape(-1)].view(n, p, top.shape[-1], cv)
        out = torch.matmul(F.softmax(top, dim=2).unsqueeze(2), picked).squeeze(2)
        return out.transpose(1, 2).reshape(n, cv, h, w)

    def gather_elements(qk, mk, mv, valid):  # (S,N,C,h,w)
        return memory_readout(qk, mk[None], mv[None], valid[None], top_k)[0]

    def keys_transposed(qk, mk, mv, valid):  # (S,N,P,C)
        s, n, p, ck = mk.shape
        q = (qk / math.sqrt(ck)).reshape(ck, p).t()
        keys = mk.transpose(0, 1).reshape(n, s * p, ck)
        aff = torch.matmul(q, keys.transpose(1, 2)) + bias_of(valid, s, p).reshape(1, 1, -1)
        top, idx = torch.topk(aff, top_k, dim=2)
        slot = idx // p
        rows = (slot * n + torch.arange(n).view(n, 1, 1)) * p + (idx - slot * p)
        return weighted_rows(top, rows, mv, n, p)

    def two_stage(qk, mk, mv, valid):  # (S,N,P,C)
        s, n, p, ck = mk.shape
        k1 = min(top_k, p)
        q = (qk / math.sqrt(ck)).reshape(ck, p).t()
        top1, idx1 = torch.topk(torch.matmul(q, mk.transpose(2, 3)), k1, dim=3)  # (S,N,P,k1)
        top1 = top1 + bias_of(valid, s, 1).view(s, 1, 1, 1)
        top, j = torch.topk(top1.permute(1, 2, 0, 3).reshape(n, p, s * k1), top_k, dim=2)
        slot = j // k1
        obj = torch.arange(n).view(n, 1, 1)
        flat = ((slot * n + obj) * p + torch.arange(p).view(1, p, 1)) * k1 + (j - slot * k1)
        pos = idx1.reshape(-1)[flat.reshape(-1)].view(n, p, top_k)
        return weighted_rows(top, (slot * n + obj) * p + pos, mv, n, p)

    def block_max(qk, mk, mv, valid):  # (N,S,P,C); blocks of one feature-map row
        n, s, p, ck = mk.shape
        blocks = s * p // w
        q = (qk / math.sqrt(ck)).reshape(ck, p).t()
        aff = torch.matmul(q, mk.reshape(n, s * p, ck).transpose(1, 2)).view(n, p, blocks, w)
        bias = bias_of(valid, s, h).reshape(blocks)
        _, best = torch.topk(aff.amax(3) + bias, top_k, dim=2)
        rows = best + (torch.arange(n * p) * blocks).view(n, p, 1)
        cand = aff.reshape(-1, w)[rows.reshape(-1)].view(n, p, top_k, w) + bias[best][..., None]
        top, c = torch.topk(cand.reshape(n, p, top_k * w), top_k, dim=2)
        pos = torch.gather(best, 2, c // w) * w + c % w
        return weighted_rows(top, pos + (torch.arange(n) * s * p).view(n, 1, 1), mv, n, p)

    def deployed(qk, mk, mv, valid):
        return banked_memory_read(qk, mk, mv, valid, top_k)

    def prescaled(qk, mk, mv, valid):  # keys already divided by sqrt(CK) in the bank
        n, s, p, ck = mk.shape
        aff = torch.matmul(qk.reshape(ck, p).t(), mk.reshape(n, s * p, ck).transpose(1, 2))
        top, idx = torch.topk(aff + bias_of(valid, s, p).reshape(1, 1, -1), top_k, dim=2)
        return weighted_rows(top, idx + (torch.arange(n) * s * p).view(n, 1, 1), mv, n, p)

    def no_bias(qk, mk, mv, valid):
        n, s, p, ck = mk.shape
        q = (qk / math.sqrt(ck)).reshape(ck, p).t()
        top, idx = torch.topk(torch.matmul(q, mk.reshape(n, s * p, ck).transpose(1, 2)),
                              top_k, dim=2)
        return weighted_rows(top + 0 * valid.sum(), idx + (torch.arange(n) * s * p).view(n, 1, 1),
                             mv, n, p)

    out = {
        "gather-elements": (gather_elements, "slot-5d"),
        "keys-transposed": (keys_transposed, "slot-major"),
        "two-stage-topk": (two_stage, "slot-major"),
        "block-max-topk": (block_max, "deployed"),
        "deployed": (deployed, "deployed"),
        "keys-prescaled": (prescaled, "prescaled"),
        "no-slot-bias": (no_bias, "deployed"),
    }
    if slots * h < top_k:  # fewer blocks (feature-map rows) than k
        del out["block-max-topk"]
    return out


def in_layout(mem: Memory, layout: str, h: int, w: int) -> Memory:
    """The same memory as each option stores it."""
    qk, k, v, valid = (mem[n] for n in ("query_key", "mem_keys", "mem_values", "mem_valid"))
    if layout == "slot-5d":  # (S, N, C, h, w)
        k, v = (a.transpose(1, 0, 3, 2).reshape(a.shape[1], a.shape[0], a.shape[3], h, w)
                for a in (k, v))
    elif layout == "slot-major":  # (S, N, P, C)
        k, v = (a.transpose(1, 0, 2, 3) for a in (k, v))
    elif layout == "prescaled":
        k = k / np.float32(math.sqrt(k.shape[-1]))
    out = {"query_key": qk, "mem_keys": k, "mem_values": v, "mem_valid": valid}
    return {n: np.ascontiguousarray(a, np.float32) for n, a in out.items()}


def export(fn: Callable[..., Any], feeds: Memory, path: Path) -> None:
    import warnings

    import onnx
    import onnxslim
    import torch

    class Graph(torch.nn.Module):
        def forward(self, *args: Any) -> Any:
            return fn(*args)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(Graph(), tuple(torch.from_numpy(a) for a in feeds.values()), str(path),
                          dynamo=False, opset_version=17, input_names=list(feeds),
                          output_names=["readout"])
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))


# ---------------------------------------------------------------------------------- timing
def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()  # the runtime's settings (runtime/backends/ort.py)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _timed(call: Callable[[], Any], iters: int) -> tuple[list[float], list[float]]:
    for _ in range(3):
        call()
    wall, cpu = [], []
    for _ in range(iters):
        c0, t0 = time.process_time(), time.perf_counter()
        call()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def time_ort(path: Path, feeds: Memory, threads: int, iters: int) -> tuple[Any, list, list]:
    import onnxruntime as ort

    sess = _ort_session(path, threads)
    binding = sess.io_binding()
    keep = [ort.OrtValue.ortvalue_from_numpy(a) for a in feeds.values()]
    for name, v in zip(feeds, keep):
        binding.bind_ortvalue_input(name, v)
    binding.bind_output("readout")
    wall, cpu = _timed(lambda: sess.run_with_iobinding(binding), iters)
    return binding.copy_outputs_to_cpu()[0], wall, cpu


def time_openvino(path: Path, feeds: Memory, threads: int, iters: int) -> tuple[Any, list, list]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    wall, cpu = _timed(lambda: request.infer(feeds, share_inputs=True), iters)
    return request.infer(feeds, share_inputs=True)[0], wall, cpu


def time_parts(mem: Memory, top_k: int, threads: int, iters: int, tmp: Path
               ) -> dict[str, float]:
    """Median wall ms of the deployed read's parts alone on ONNX Runtime."""
    import torch

    from training.memory_read import affinity, affinity_top_k

    def gemm_top_k(qk, mk, valid):
        return affinity_top_k(qk, mk, valid, top_k)[0]

    def top_k_only(scores):
        return torch.topk(scores, top_k, dim=2)[0]

    names = ("query_key", "mem_keys", "mem_valid")
    with torch.inference_mode():
        scores = affinity(*(torch.from_numpy(mem[n]) for n in names))
    parts = {"gemm+topk": (gemm_top_k, {n: mem[n] for n in names}),
             "topk": (top_k_only, {"affinity": scores.numpy()})}
    out = {}
    for name, (fn, feeds) in parts.items():
        path = tmp / f"part-{name}.onnx"
        export(fn, feeds, path)
        out[f"{name}_ms_median"] = round(float(np.median(time_ort(path, feeds, threads, iters)[1])), 3)
    return out


def bf16_selection(mem: Memory, top_k: int) -> dict[str, float]:
    """Rows whose top-k set changes when the affinity's inputs are rounded to bf16."""
    import torch

    from training.memory_read import affinity_top_k

    t = {n: torch.from_numpy(a) for n, a in mem.items()}
    _, ref = affinity_top_k(t["query_key"], t["mem_keys"], t["mem_valid"], top_k)
    bf = {n: t[n].bfloat16().float() for n in ("query_key", "mem_keys")}
    _, got = affinity_top_k(bf["query_key"], bf["mem_keys"], t["mem_valid"], top_k)
    ref_sorted, got_sorted = ref.sort(-1).values, got.sort(-1).values
    changed = (ref_sorted != got_sorted).any(-1)
    swapped = sum(len(set(a.tolist()) - set(b.tolist()))
                  for a, b in zip(ref.reshape(-1, top_k), got.reshape(-1, top_k)))
    return {"rows_changed_fraction": round(float(changed.float().mean()), 4),
            "positions_swapped_fraction": round(swapped / ref.numel(), 4)}


# -------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg, help="exported engine directory")
    p.add_argument("--iters", type=int, default=20, help="timed calls per option")
    add_common_arguments(p)  # --threads, --input, --mask, --out, ...
    args = p.parse_args(argv)
    if args.iters < 1 or (args.threads is not None and args.threads < 1):
        p.error("--iters and --threads must be >= 1")
    threads = args.threads or default_threads()
    import torch

    from runtime.core.errors import QDMNRuntimeError
    from runtime.core.manifest import Manifest, ManifestError
    from training.model import memory_readout

    torch.set_num_threads(threads)
    try:
        manifest = Manifest.load(args.engine_dir)
        clip = load_clip(args.input, args.mask, args.max_source_frames)
        print("filling the memory bank...", file=sys.stderr, flush=True)
        mem = real_memory(args.engine_dir, clip, threads)
    except (BenchmarkError, ManifestError, QDMNRuntimeError, OSError) as e:
        return fail(e)
    h, w = manifest.feature_size
    k = manifest.top_k
    t = {n: torch.from_numpy(a) for n, a in in_layout(mem, "slot-5d", h, w).items()}
    with torch.inference_mode():
        want = memory_readout(t["query_key"], t["mem_keys"][None], t["mem_values"][None],
                              t["mem_valid"][None], k)[0].numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("  the deployed read's parts...", file=sys.stderr, flush=True)
        parts = time_parts(in_layout(mem, "deployed", h, w), k, threads, args.iters, Path(tmp))
        for name, (fn, layout) in options(k, manifest.capacity, h, w).items():
            feeds = in_layout(mem, layout, h, w)
            path = Path(tmp) / f"{name}.onnx"
            export(fn, feeds, path)
            engines = [("onnxruntime", time_ort)]
            if name == "deployed":
                engines.append(("openvino", time_openvino))
            for engine, timer in engines:
                print(f"  {name} on {engine}...", file=sys.stderr, flush=True)
                try:
                    got, wall, _ = timer(path, feeds, threads, args.iters)
                    _, _, cpu1 = timer(path, feeds, 1, args.iters)
                except ImportError as e:
                    rows.append({"option": name, "engine": engine, "skipped": str(e)})
                    continue
                rows.append({
                    "option": name, "engine": engine, "layout": layout,
                    "ms_median": round(float(np.median(wall)), 3),
                    "ms_min": round(float(np.min(wall)), 3),
                    "cpu_ms_1_thread": round(float(np.median(cpu1)), 3),
                    "max_abs_diff_vs_reference": float(np.abs(got - want).max()),
                    "exact": name != "no-slot-bias",
                })
    result = {
        "benchmark": "read_options",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(threads),
        "engine": {"height": manifest.height, "width": manifest.width,
                   "max_objects": manifest.max_objects, "memory_size": manifest.memory_size,
                   "top_k": k, "key_dim": manifest.key_dim, "value_dim": manifest.value_dim},
        "input": {"source": portable_path(clip.source), "frames_run": manifest.mem_every *
                  manifest.memory_size + 6, "valid_slots": int(mem["mem_valid"].sum())},
        "settings": {"threads": threads, "iters": args.iters},
        "options": rows,
        "parts_onnxruntime": parts,
        "bf16_affinity": bf16_selection(mem, k),
    }
    print(f"\nMemory read options ({manifest.height}x{manifest.width}, {manifest.max_objects} "
          f"objects, {manifest.capacity} slots, top-{k}, {threads} threads, "
          f"{result['machine']['cpu_model']}); ms per read")
    print(table(["option", "engine", "ms median", "ms min", "CPU ms (1 thread)", "max |diff|"],
                [[r["option"], r["engine"], r.get("ms_median"), r.get("ms_min"),
                  r.get("cpu_ms_1_thread"), f"{r['max_abs_diff_vs_reference']:.1e}"]
                 for r in rows if "ms_median" in r]))
    print("deployed read's parts alone (ONNX Runtime, ms median):", parts)
    print("bf16 affinity:", result["bf16_affinity"])
    print("wrote", write_json(args.out / "read_options.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
