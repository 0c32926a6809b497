"""Propagation speed in qdmn-app against `runtime/run.py` on the same clip and the same loaded
graphs: the app's model FPS should be at least 90 % of run.py's.

    python benchmarks/app_speed.py [--engine-dir engines/qdmn-light] [--input FRAMES|VIDEO]
        [--mask FIRST.png] [--backend auto] [--threads T] [--repeats 3] [--out results/app_speed]

One segmenter serves both paths. run.py's: `runtime.job.segment_video` into a scratch folder.
The app's: its propagation endpoint, driven as the page drives it (a session opens the clip
under the app's root, the first mask is given as a PNG, the WebSocket runs the propagation);
the rate is the one the endpoint reports. Model FPS, as run.json's `fps`, is over the time inside
the segmenter (1000 / the mean of record.ms["total"]); end-to-end FPS is over the wall time.
The runs alternate (run.py, app, app, run.py, ...) so that a drift of a shared machine's load
hits both alike. Writes OUT/app_speed.json (the machine, every run, the means and the ratio).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_OUT,
    BenchmarkError,
    davis_mask_for,
    default_input,
    machine_info,
    portable_path,
    table,
    write_json,
)
from runtime.cli import fail, path_arg
from runtime.core.errors import QDMNRuntimeError
from runtime.options import add_execution_options

TARGET = 0.9  # the app propagates at >= 90 % of run.py's model FPS


def run_job(segmenter: Any, source: Path, mask: Path, out: Path) -> dict[str, Any]:
    """run.py's path: the per-video job into a scratch folder; its run.json's rates."""
    from runtime.job import segment_video

    log = segment_video(segmenter, source, mask, out)
    s = log["summary"]
    return {"path": "run.py", "frames": s["frames"], "fps": s["fps"], "wall_fps": s["wall_fps"]}


def run_app(client: Any, source: Path, mask: Path) -> dict[str, Any]:
    """The app's path: a session opens the clip, takes the first mask, propagates over the
    WebSocket; the rates the endpoint reports."""
    sid = _ok(client.post("/api/sessions"))["id"]
    _ok(client.post(f"/api/s/{sid}/open", json={"path": source.name}))
    _ok(client.put(f"/api/s/{sid}/mask/0?name={mask.name}", content=mask.read_bytes()))
    with client.websocket_connect(f"ws://127.0.0.1/api/s/{sid}/propagate") as ws:
        ws.send_json({"start": 0})
        while (m := ws.receive_json())["type"] == "frame":
            pass
    client.post(f"/api/s/{sid}/close")
    if m["type"] != "done":
        raise BenchmarkError(f"the app's propagation failed: {m.get('message')}")
    return {"path": "app", "frames": m["frames"], "fps": m["fps"],
            "wall_fps": round(m["frames"] / m["wall_s"], 3)}


def _ok(r: Any) -> dict[str, Any]:
    if r.status_code != 200:
        raise BenchmarkError(f"the app refused {r.request.url.path}: {r.json().get('error')}")
    return r.json()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", type=path_arg, default=Path("engines/qdmn-light"))
    p.add_argument("--input", type=path_arg, default=None,
                   help="frames folder or video (default: the demo's one-object clip)")
    p.add_argument("--mask", type=path_arg, default=None,
                   help="first-frame mask (default: the DAVIS annotation of --input)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path (default 3)")
    add_execution_options(p, ("backend", "threads"))
    p.add_argument("--out", type=path_arg, default=DEFAULT_OUT / "app_speed")
    args = p.parse_args(argv)
    try:
        from fastapi.testclient import TestClient

        from app.server import create_app
        from runtime.backends import create_backend
        from runtime.core.config import RuntimeConfig
        from runtime.core.manifest import Manifest
        from runtime.media.outputs import check_writable_dir
        from runtime.segmenter import Segmenter

        if args.repeats < 1:
            raise BenchmarkError(f"--repeats {args.repeats}: expected >= 1")
        source = (args.input or default_input()).resolve()
        mask = args.mask or davis_mask_for(source)
        if mask is None:
            raise BenchmarkError(f"--mask: {source} is not a DAVIS frames folder; name its mask")
        check_writable_dir(args.out)
        manifest = Manifest.load(args.engine_dir)
        config = RuntimeConfig(threads=args.threads).resolve(manifest)
        backend = create_backend(args.backend, manifest, args.engine_dir, config)
        runs = []
        with (Segmenter.from_backend(manifest, backend, config) as seg,
              tempfile.TemporaryDirectory(prefix="qdmn-app-speed-") as tmp):
            client = TestClient(create_app(seg, source.parent, Path(tmp) / "work"),
                                base_url="http://127.0.0.1")
            order = [x for r in range(args.repeats)
                     for x in (("run.py", "app") if r % 2 == 0 else ("app", "run.py"))]
            for k, path in enumerate(order):
                run = (run_job(seg, source, mask, Path(tmp) / f"out-{k}") if path == "run.py"
                       else run_app(client, source, mask))
                runs.append(run)
                print(f"{path}: {run['fps']} FPS (model), {run['wall_fps']} end to end, "
                      f"{run['frames']} frames", flush=True)
            backend_name = seg.backend.describe().get("name")
    except ImportError as e:
        return fail(f"{e}: the app's benchmark needs the [app] and [dev] extras")
    except (BenchmarkError, QDMNRuntimeError, OSError) as e:
        return fail(e)
    mean = {path: {k: round(statistics.mean(r[k] for r in runs if r["path"] == path), 3)
                   for k in ("fps", "wall_fps")} for path in ("run.py", "app")}
    ratio = round(mean["app"]["fps"] / mean["run.py"]["fps"], 3)
    doc = {"machine": machine_info(threads=config.threads or 0),
           "engine": {"name": args.engine_dir.name, "size": [manifest.height, manifest.width],
                      "max_objects": manifest.max_objects, "precision": manifest.precision},
           "backend": backend_name, "input": portable_path(source),
           "mask": portable_path(mask), "order": order, "runs": runs, "mean": mean,
           "app_vs_run_py_model_fps": ratio, "target": TARGET}
    path = write_json(args.out / "app_speed.json", doc)
    print(table(["path", "model FPS", "end-to-end FPS"],
                [[k, v["fps"], v["wall_fps"]] for k, v in mean.items()]))
    print(f"app / run.py model FPS: {ratio} (target >= {TARGET})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
