"""Corpus throughput of `runtime/batch.py`: videos/hour and frames/s per worker layout.

    python benchmarks/batch_throughput.py --engine-dir engines/qdmn-light \
        [--layouts 1x2,2x1] [--clips 12] [--frames 16] [--repeats 2] [--backend auto] \
        [--out results/batch_throughput]

The corpus is cut from the demo clips (evaluation.datasets.demo_root): --clips clips of --frames frames,
taken in turn from each demo video, each with the ground truth of its first frame as the mask.
Each layout WORKERS x THREADS runs the real CLI in its own process (a fresh local Ray) over the
same corpus, --repeats times, in ABBA order so that a drift of the shared machine's load hits
every layout alike. Per run, from the CLI's summary.json: the corpus wall time (first video
submitted to last finished), frames/s and videos/hour over it, the CPU time the workers spent
per frame (all their threads; robust to other load on a shared machine, unlike wall time), and
the one-off start-up (Ray, then the workers loading their graphs), which a long corpus
amortises.

Writes OUT/batch_throughput.json (the machine, the runs, the median per layout) and prints the
table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, BenchmarkError, machine_info, table, write_json
from evaluation.datasets import demo_root
from runtime.cli import fail, path_arg
from runtime.media.davis import DavisLayout
from runtime.options import add_execution_options


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """'1x2,2x1' -> [(1, 2), (2, 1)] (workers x threads per worker)."""
    out = []
    for item in text.split(","):
        try:
            w, t = (int(x) for x in item.strip().lower().split("x"))
        except ValueError:
            raise BenchmarkError(f"--layouts {text!r}: expected WORKERSxTHREADS,...") from None
        if w < 1 or t < 1:
            raise BenchmarkError(f"--layouts {item!r}: workers and threads must be >= 1")
        out.append((w, t))
    return out


def make_corpus(root: Path, clips: int, frames: int) -> int:
    """`clips` clips of `frames` frames in the DAVIS layout under `root`; returns total frames."""
    demo = DavisLayout(demo_root()[0])
    videos = sorted(p.name for p in demo.frames_root.iterdir() if p.is_dir())
    lengths = {v: len(list(demo.frames_dir(v).glob("*.jpg"))) for v in videos}
    layout = DavisLayout(root)
    starts = {v: 0 for v in videos}
    total = 0
    for c in range(clips):
        v = videos[c % len(videos)]
        if starts[v] + frames > lengths[v]:
            starts[v] = 0  # the demo clip is used up: start it again
            if frames > lengths[v]:
                raise BenchmarkError(f"--frames {frames}: the demo clip {v} has {lengths[v]}")
        name = f"{v}-{c:02d}"
        layout.frames_dir(name).mkdir(parents=True)
        layout.annotations_dir(name).mkdir(parents=True)
        for i in range(frames):
            src = starts[v] + i
            shutil.copy(demo.frames_dir(v) / f"{src:05d}.jpg",
                        layout.frames_dir(name) / f"{i:05d}.jpg")
        shutil.copy(demo.annotation(v, f"{starts[v]:05d}"),
                    layout.annotation(name, "00000"))
        starts[v] += frames
        total += frames
    return total


def run_layout(engine: Path, corpus: Path, out: Path, workers: int, threads: int,
               backend: str) -> dict[str, Any]:
    """One CLI run (this checkout's runtime/batch.py, in its own process); the numbers of its
    summary.json."""
    cmd = [sys.executable, "-m", "runtime.batch", "--engine-dir", str(engine.absolute()),
           "--videos", str(corpus.absolute()), "--output", str(out.absolute()),
           "--workers", str(workers), "--threads-per-worker", str(threads), "--backend", backend,
           "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchmarkError(f"{workers}x{threads}: batch.py failed: {r.stderr.strip()[-500:]}")
    s = json.loads((out / "summary.json").read_text())
    if s["counts"]["done"] != len(s["videos"]):
        raise BenchmarkError(f"{workers}x{threads}: not every video was segmented: {s['counts']}")
    return {"workers": workers, "threads_per_worker": threads, "backends": s["backends"],
            "videos": len(s["videos"]), "frames": s["frames"], "wall_s": s["wall_s"],
            "frames_per_s": s["frames_per_s"], "videos_per_hour": s["videos_per_hour"],
            "cpu_ms_per_frame": s["cpu_ms_per_frame"],
            "ray_start_s": s["ray_start_s"], "workers_start_s": s["workers_start_s"],
            "process_s": round(process_s, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=path_arg, default=REPO / "engines" / "qdmn-light")
    p.add_argument("--layouts", default="1x2,2x1", help="WORKERSxTHREADS,... (default 1x2,2x1)")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--repeats", type=int, default=2)
    add_execution_options(p, ("backend",))
    p.add_argument("--out", type=path_arg, default=REPO / "results" / "batch_throughput")
    args = p.parse_args(argv)
    try:
        layouts = parse_layouts(args.layouts)
        for name in ("clips", "frames", "repeats"):
            if getattr(args, name) < 1:
                raise BenchmarkError(f"--{name} {getattr(args, name)}: expected >= 1")
        from runtime.core.manifest import Manifest
        from runtime.media.outputs import check_writable_dir

        manifest = Manifest.load(args.engine_dir)
        check_writable_dir(args.out)
        order = [x for r in range(args.repeats) for x in (layouts if r % 2 == 0 else layouts[::-1])]
        runs = []
        with tempfile.TemporaryDirectory(prefix="qdmn-batch-bench-") as tmp:
            corpus = Path(tmp) / "corpus"
            total = make_corpus(corpus, args.clips, args.frames)
            for k, (w, t) in enumerate(order):
                out = Path(tmp) / f"out-{k}"
                runs.append(run_layout(args.engine_dir, corpus, out, w, t, args.backend))
                r = runs[-1]
                print(f"{w}x{t}: {r['frames_per_s']} frames/s, {r['videos_per_hour']} videos/h, "
                      f"{r['cpu_ms_per_frame']} CPU ms/frame "
                      f"(corpus {r['wall_s']} s, start-up {r['ray_start_s']} + "
                      f"{r['workers_start_s']} s)", flush=True)
    except (BenchmarkError, OSError, ValueError) as e:
        return fail(e)
    median = []
    for w, t in layouts:
        mine = [r for r in runs if (r["workers"], r["threads_per_worker"]) == (w, t)]
        median.append({"layout": f"{w}x{t}", **{k: round(statistics.median(r[k] for r in mine), 3)
                       for k in ("frames_per_s", "videos_per_hour", "cpu_ms_per_frame", "wall_s",
                                 "ray_start_s", "workers_start_s", "process_s")},
                       "frames_per_s_range": [min(r["frames_per_s"] for r in mine),
                                              max(r["frames_per_s"] for r in mine)]})
    machine = machine_info(threads=max(t for _, t in layouts))
    machine["versions"]["ray"] = metadata.version("ray")
    doc = {"machine": machine,
           "engine": {"name": args.engine_dir.name, "size": [manifest.height, manifest.width],
                      "max_objects": manifest.max_objects, "memory_size": manifest.memory_size,
                      "precision": manifest.precision},
           "backend": args.backend, "backends_used": sorted({b for r in runs for b in r["backends"]}),
           "corpus": {"clips": args.clips, "frames_per_clip": args.frames, "frames": total,
                      "from": str(demo_root()[0])},
           "order": [f"{w}x{t}" for w, t in order], "runs": runs, "median": median}
    path = write_json(args.out / "batch_throughput.json", doc)
    print(table(["layout (workers x threads)", "frames/s", "(min-max)", "videos/h",
                 "CPU ms/frame", "corpus s", "Ray start s", "workers start s"],
                [[m["layout"], m["frames_per_s"], "-".join(map(str, m["frames_per_s_range"])),
                  m["videos_per_hour"], m["cpu_ms_per_frame"], m["wall_s"], m["ray_start_s"],
                  m["workers_start_s"]] for m in median]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
