"""Segment a corpus of videos on a Ray cluster (a local one, in-process, by default).

    python runtime/batch.py --engine-dir DIR --videos ROOT|LIST.csv|LIST.json --output OUT \\
        [--address auto|HOST:PORT|ray://HOST:PORT] [--workers N] [--threads-per-worker T] \\
        [--backend auto|trt|ort-cuda|ort-cpu|openvino|openvino-bf16] [--memory-size B] \\
        [--mem-every K] [--quality-threshold S] [--fit letterbox|stretch] [--locality R] \\
        [--quality-score qam*confidence|qam] [--max-frames N] [--overlay] [--quiet]

Each worker is a Ray actor holding one `Segmenter` (graphs loaded once) that segments one video
after another with `runtime.job.segment_video`, the code path of `runtime/run.py`: OUT/<video>/
gets the same palette PNGs and run.json (and overlay.mp4 with --overlay), staged and moved in
whole. A video that fails (corrupt frame, bad mask) is recorded with its one-line error and the
others go on; a worker that dies is restarted by Ray and its video retried once. Ctrl-C stops
the workers and keeps the finished videos. A rerun skips the videos complete for the same graphs
and settings. OUT/summary.json and OUT/summary.csv list every video. Exit status: 0 all done, 1
some video failed or nothing could start (one `error:` line, nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import select
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from runtime.backends import BACKENDS, GPU_BACKENDS  # each GPU worker asks Ray for one GPU
from runtime.cli import fail, one_line, path_arg, warnings_as_lines
from runtime.core.config import RuntimeConfig
from runtime.core.errors import QDMNRuntimeError
from runtime.core.manifest import Manifest
from runtime.corpus import (
    OVERLAY,
    Outcome,
    Video,
    check_summary_target,
    completed_log,
    engine_fingerprint,
    list_videos,
    remove_staging,
    video_key,
    write_summary,
)
from runtime.job import check_apart, check_outputs, segment_video
from runtime.media.outputs import (
    OutputLock,
    as_received,
    check_writable_dir,
    deferred_signals,
    interrupt_exit_code,
    terminate_as_interrupt,
)
from runtime.options import add_execution_options, add_runtime_options, runtime_settings
from runtime.segmenter import Segmenter

try:
    import ray
except ImportError:  # the optional [cluster] extra
    ray = None

KILL_WAIT_S = 30.0  # after Ctrl-C: how long to wait for the killed workers to be gone
PROBE_S = 10.0  # --address: how long the cluster may take to answer a gRPC handshake
RESTART_WAIT_S = 60.0  # how long a dead worker may take to be restarted by Ray


class BatchError(QDMNRuntimeError):
    """A problem found before any video starts (printed as one line; nothing written)."""


@dataclass(frozen=True)
class Settings:
    """Everything a video's masks depend on besides the graphs (its resume key holds them)."""

    backend: str
    memory_size: int
    mem_every: int
    quality_threshold: float
    fit: str
    locality: float
    quality_score: str
    max_frames: int | None
    overlay: bool


@dataclass(frozen=True)
class Plan:
    """How many workers and what each asks Ray for."""

    workers: int
    threads: int  # CPU threads per worker (Ray reserves as many CPUs for it)
    gpus: int  # 1 for GPU backends, else 0

    def options(self) -> dict[str, Any]:
        # Restarts are bounded by the driver: each death of a worker costs one of the two
        # attempts of the video it was segmenting.
        return {"num_cpus": self.threads, "num_gpus": self.gpus, "max_restarts": -1,
                "max_task_retries": 0}


class VideoWorker:
    """A Ray actor: one Segmenter, loaded once, segmenting one video after another.

    Errors never leave a method as exceptions: a video's failure comes back as its one-line
    message, so the only exceptions the driver sees are Ray's own (a dead worker).
    """

    def __init__(self, engine_dir: str, backend: str, config: RuntimeConfig):
        self.error: str | None = None
        self.segmenter: Segmenter | None = None
        try:
            self.segmenter = Segmenter(engine_dir, backend, config)
            self.fingerprint = engine_fingerprint(self.segmenter.manifest)
        except Exception as e:  # noqa: BLE001 - reported by describe()
            self.error = one_line(e)

    def describe(self) -> dict[str, Any]:
        """Where this worker runs, its backend and graph hashes, or why it could not start."""
        where = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        if self.segmenter is None:
            return {"worker": where, "error": self.error}
        return {"worker": where, "error": None, "fingerprint": self.fingerprint,
                "backend": self.segmenter.backend.describe()["name"]}

    def segment(self, video: Video, output: str, key: dict[str, Any],
                settings: Settings) -> dict[str, Any]:
        """Segment one video into output/<name>/; returns its run summary or its error."""
        where = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        if self.segmenter is None:
            return {"worker": where, "error": f"worker could not start: {self.error}"}
        folder = Path(output) / video.name
        cpu0 = time.process_time()  # every thread of this process: reader, model, writer
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                given = video.mask.is_dir()
                log = segment_video(self.segmenter, video.input,
                                    None if given else video.mask, folder,
                                    masks=video.mask if given else None, overlay=folder / OVERLAY if settings.overlay else None,
                                    max_frames=settings.max_frames, extra={"batch": key})
                error = None
            except Exception as e:  # noqa: BLE001 - recorded as the video's error
                log, error = None, one_line(e)
        return {"worker": where, "error": error, "summary": log and log["summary"],
                "cpu_s": round(time.process_time() - cpu0, 3),
                "warnings": [" ".join(str(w.message).split()) for w in caught]}


# ---------------------------------------------------------------------------------- Ray
def connect(address: str | None) -> bool:
    """Start a local Ray (address None) or join a cluster; True when this call started Ray
    (the caller shuts it down). A Ray already initialised in this process is used as is."""
    if address is None:
        if ray.is_initialized():
            return False
        # "local": a new Ray on this machine even where RAY_ADDRESS names a cluster
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        return True
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        raise BatchError(f"cannot connect to Ray at {address}: {one_line(e)}") from None
    return True


def _probe(address: str) -> None:
    """Fail fast, with one line, when nothing listens at HOST:PORT or what listens does not
    speak gRPC, as Ray's GCS and client server do (Ray would retry for minutes, or for ever)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise BatchError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise BatchError(f"cannot reach Ray at {address}: {e.strerror or e} (is the cluster up? "
                         "`ray start --head` on its head node)") from None
    import grpc  # a dependency of Ray

    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=PROBE_S)
    except grpc.FutureTimeoutError:
        raise BatchError(f"{address} accepts connections but does not answer as Ray (no gRPC "
                         f"handshake in {PROBE_S:.0f} s): is it the head node's GCS port "
                         "(HOST:6379) or its client port (ray://HOST:10001)?") from None
    finally:
        channel.close()


def plan_workers(backend: str, workers: int | None, threads: int | None, todo: int) -> Plan:
    """Workers and threads for the Ray cluster at hand; refuses what it cannot schedule."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    threads = threads or 1
    if backend in GPU_BACKENDS:
        workers = workers or max(gpus, 1)
        if workers > gpus:
            raise BatchError(f"--backend {backend}: {workers} worker(s) need {workers} GPU(s), "
                             f"the Ray cluster has {gpus}")
    else:
        workers = workers or max(cpus // threads, 1)
    if workers * threads > cpus:
        raise BatchError(f"{workers} worker(s) x {threads} thread(s) need {workers * threads} "
                         f"CPUs, the Ray cluster has {cpus}: lower --workers or "
                         "--threads-per-worker")
    return Plan(min(workers, max(todo, 1)), threads, 1 if backend in GPU_BACKENDS else 0)


@dataclass
class CorpusRun:
    """What a corpus run did: one outcome per video, in corpus order."""

    outcomes: list[Outcome]
    info: dict[str, Any]
    interrupted: KeyboardInterrupt | None = None  # Ctrl-C, or SIGTERM (Terminated)


def run_corpus(engine_dir: Path, videos: Sequence[Video], output: Path, settings: Settings,
               plan: Plan, config: RuntimeConfig, fingerprint: dict[str, str], *,
               progress: bool = True, worker: type[VideoWorker] = VideoWorker) -> CorpusRun:
    """Segment `videos` into `output` on the connected Ray cluster (see the module docstring).

    config: the resolved RuntimeConfig each worker's Segmenter gets (threads = plan.threads).
    worker: the actor class (a subclass can inject faults in tests).
    """
    say = _printer(progress)
    skey = dataclasses.asdict(settings)
    keys = {v.name: video_key(fingerprint, skey, v) for v in videos}
    outcomes: dict[str, Outcome] = {}
    todo: collections.deque[Video] = collections.deque()
    for v in videos:
        log = completed_log(output, v, keys[v.name])
        if log is None:
            todo.append(v)
        else:
            outcomes[v.name] = Outcome.from_log(v, "skipped", log["summary"], attempts=0)
    info: dict[str, Any] = {"engine_dir": str(engine_dir), "engine": fingerprint,
                            "settings": skey, "workers": 0, "threads_per_worker": plan.threads,
                            "gpus_per_worker": plan.gpus, "ray": ray.__version__}
    if todo:
        actor_cls = ray.remote(worker).options(**plan.options())
        n = min(plan.workers, len(todo))
        t_start = time.perf_counter()
        actors = [actor_cls.remote(str(engine_dir), settings.backend, config) for _ in range(n)]
        described = ray.get([a.describe.remote() for a in actors])
        info["workers_start_s"] = round(time.perf_counter() - t_start, 3)
        for d in described:
            if d["error"]:
                raise BatchError(f"worker {d['worker']} could not start: {d['error']}")
            if d["fingerprint"] != fingerprint:
                raise BatchError(f"worker {d['worker']} sees other graph files in {engine_dir} "
                                 "than this machine: every node needs the same engine folder")
        info.update(workers=n, backends=sorted({d["backend"] for d in described}),
                    nodes=sorted({d["worker"].rsplit(":", 1)[0] for d in described}))
        say(f"{len(todo)} videos to segment on {n} worker(s) x {plan.threads} thread(s) "
            f"({', '.join(info['backends'])}); {len(outcomes)} already done")
    interrupted = None
    t0 = time.perf_counter()
    if todo:
        # Made once here rather than by whichever worker stages first: a failing job removes
        # the parent folders it created when they are empty, which could race with another
        # worker about to stage its video in OUT.
        output.mkdir(parents=True, exist_ok=True)
        where = [d["worker"] for d in described]
        interrupted = _schedule(actors, where, todo, output, keys, settings, outcomes, say,
                                progress)
    wall = time.perf_counter() - t0
    ran = [o for o in outcomes.values() if o.status == "done"]
    frames = sum(o.frames or 0 for o in ran)
    cpu_s = sum(o.cpu_s or 0.0 for o in ran)
    info.update(wall_s=round(wall, 3), frames=frames,
                cpu_ms_per_frame=round(cpu_s * 1e3 / frames, 2) if frames else None,
                frames_per_s=round(frames / wall, 3) if wall > 0 and ran else None,
                videos_per_hour=round(len(ran) * 3600 / wall, 1) if wall > 0 and ran else None)
    return CorpusRun([outcomes[v.name] for v in videos], info, interrupted)


def _schedule(actors: list[Any], where: list[str], todo: collections.deque[Video],
              output: Path, keys: dict[str, dict[str, Any]], settings: Settings,
              outcomes: dict[str, Outcome], say: Any,
              progress: bool) -> KeyboardInterrupt | None:
    """Keep every worker busy with one video at a time until the queue is empty; returns the
    Ctrl-C/SIGTERM that stopped it, if one did (in-flight videos are recorded as interrupted).

    where: each actor's "node:pid" (updated from its answers: a restarted worker has a new pid).
    """
    pending: dict[Any, tuple[int, Video, int]] = {}  # ref -> (actor, video, attempt)
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
    frames, t0 = 0, time.perf_counter()

    def submit(i: int, video: Video, attempt: int) -> None:
        ref = actors[i].segment.remote(video, str(output), keys[video.name], settings)
        pending[ref] = (i, video, attempt)

    try:
        with deferred_signals():
            for i in range(len(actors)):
                if todo:
                    submit(i, todo.popleft(), 1)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)  # where Ctrl-C/SIGTERM lands
            with deferred_signals():  # the bookkeeping of a result is never cut in half
                i, video, attempt = pending.pop(ref)
                outcome = _collect(ref, video, attempt, output, say)
                if outcome is not None and outcome.worker:
                    where[i] = outcome.worker
                if outcome is None:  # its worker died: once, so retry it on the restarted one
                    where[i] = _restarted(actors[i]) or where[i]
                    submit(i, video, 2)
                    continue
                outcomes[video.name] = outcome
                frames += outcome.frames or 0
                bar.update(1)
                bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - t0):.1f}",
                                refresh=False)
                if todo:
                    submit(i, todo.popleft(), 1)
        return None
    except KeyboardInterrupt as stop:
        for a in actors:
            ray.kill(a, no_restart=True)
        # Their staging folders may only be removed once the workers are gone; a video that
        # was finished by then counts as done. Ray fails a killed worker's task as soon as the
        # worker is marked dead, which can be before its process has exited (and stopped
        # creating or writing its staging folder): wait for the processes on this machine too.
        deadline = time.monotonic() + KILL_WAIT_S
        ray.wait(list(pending), num_returns=len(pending), timeout=KILL_WAIT_S)
        _wait_until_exited(where, deadline)
        for ref, (_, video, attempt) in pending.items():
            try:
                outcomes[video.name] = _outcome(ray.get(ref, timeout=0), video, attempt, say)
            except (ray.exceptions.RayError, TimeoutError):
                remove_staging(output, video.name)
                outcomes[video.name] = Outcome(video.name, "interrupted", attempts=attempt,
                                               error="stopped by Ctrl-C/SIGTERM",
                                               input=str(video.input), mask=str(video.mask))
        for video in todo:
            outcomes[video.name] = Outcome(video.name, "not run", input=str(video.input),
                                           mask=str(video.mask))
        return as_received(stop)
    finally:
        bar.close()


def _restarted(actor: Any) -> str | None:
    """Wait (up to RESTART_WAIT_S) for a worker Ray is restarting; its new "node:pid", or None.
    A task sent while it restarts fails at once (ActorUnavailableError), which would spend the
    retry of a video whose worker died once."""
    deadline = time.monotonic() + RESTART_WAIT_S
    while True:
        try:
            return ray.get(actor.describe.remote(), timeout=RESTART_WAIT_S)["worker"]
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        except (ray.exceptions.RayError, TimeoutError):
            return None


def _wait_until_exited(where: list[str], deadline: float) -> None:
    """Wait (until `deadline`, time.monotonic()) for the worker processes of this node among
    `where` ("node:pid") to exit. Workers on other nodes cannot be watched from here."""
    here = ray.util.get_node_ip_address()
    for w in where:
        node, _, pid = w.rpartition(":")
        if node != here or not pid.isdigit():
            continue
        try:
            fd = os.pidfd_open(int(pid))  # readable once the process has exited
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): poll the pid
            while time.monotonic() < deadline and _alive(int(pid)):
                time.sleep(0.05)
            continue
        try:
            select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _collect(ref: Any, video: Video, attempt: int, output: Path, say: Any) -> Outcome | None:
    """The outcome of a finished task; None when its worker died on a first attempt."""
    try:
        res = ray.get(ref)
    except ray.exceptions.RayError as e:
        remove_staging(output, video.name)
        first = one_line(e).split(". ")[0]
        if attempt == 1:
            say(f"warning: {video.name}: its worker died ({first}); retrying it once")
            return None
        res = {"worker": None, "error": f"its worker died twice ({first})"}
    return _outcome(res, video, attempt, say)


def _outcome(res: dict[str, Any], video: Video, attempt: int, say: Any) -> Outcome:
    """A worker's answer for one video as its summary entry (and a line for the user)."""
    caught = res.get("warnings", [])
    for w in caught:
        say(f"warning: {video.name}: {w}")
    if res["error"]:
        say(f"failed {video.name}: {res['error']}")
        return Outcome(video.name, "failed", attempts=attempt, worker=res["worker"],
                       error=res["error"], warnings=caught, input=str(video.input),
                       mask=str(video.mask))
    o = Outcome.from_log(video, "done", res["summary"], attempts=attempt, worker=res["worker"],
                         cpu_s=res["cpu_s"], warnings=caught)
    say(f"done {video.name}: {o.frames} frames, {o.model_fps} fps in the model, "
        f"{o.wall_fps} end to end")
    return o


def _printer(progress: bool) -> Any:
    def say(line: str) -> None:
        if progress:
            tqdm.write(line, file=sys.stderr)
    return say


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", required=True, type=path_arg,
                   help="folder with manifest.json and the graphs (the same path on every node)")
    p.add_argument("--videos", required=True, type=path_arg,
                   help="DAVIS-layout root, or a .csv/.json list of input,mask[,name] (mask: "
                        "the first frame's PNG, or a folder of masks on any frames)")
    p.add_argument("--masks", action="store_true",
                   help="a DAVIS-layout root's videos take every annotation PNG as a given "
                        "mask (YouTube-VOS: objects first marked where they appear), not only "
                        "the first")
    p.add_argument("--output", required=True, type=path_arg, help="output folder (OUT/<video>/)")
    p.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                                     "(default: a local Ray with this machine's cores)")
    p.add_argument("--workers", type=int,
                   help="Ray actors, each with its own graphs (default: CPUs / threads, or "
                        "the GPU count for trt/ort-cuda)")
    p.add_argument("--threads-per-worker", type=int, help="CPU threads per worker (default 1)")
    add_execution_options(p, ("backend",))
    add_runtime_options(p)
    p.add_argument("--max-frames", type=int, help="stop each video after this many frames")
    p.add_argument("--overlay", action="store_true", help=f"also write OUT/<video>/{OVERLAY}")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-video lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings_as_lines()
    try:
        return _main(args)
    except (QDMNRuntimeError, OSError) as e:
        return fail(e)
    except KeyboardInterrupt as e:
        print("interrupted before any video started: nothing written", file=sys.stderr)
        return interrupt_exit_code(e)


def _main(args: argparse.Namespace) -> int:
    if ray is None:
        raise BatchError("the corpus runner needs Ray: pip install 'qdmn-deploy[cluster]' "
                         "(or pip install 'ray[client]')")
    if args.backend not in BACKENDS:
        raise BatchError(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    for name in ("workers", "threads_per_worker", "max_frames"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BatchError(f"--{name.replace('_', '-')} {value}: expected >= 1")
    manifest = Manifest.load(args.engine_dir)
    config = RuntimeConfig(**runtime_settings(args),
                           threads=args.threads_per_worker or 1).resolve(manifest)
    videos = list_videos(args.videos, args.masks)
    output = args.output.absolute()
    check_writable_dir(output)
    # for the whole run: a second corpus run into OUT is refused; its workers write inside
    lock = OutputLock(output, nested=True)
    try:
        return _run(args, manifest, config, videos, output)
    finally:
        lock.release()


def _run(args: argparse.Namespace, manifest: Manifest, config: RuntimeConfig,
         videos: list[Video], output: Path) -> int:
    for v in videos:
        overlay = output / v.name / OVERLAY if args.overlay else None
        check_apart(output / v.name, overlay, {"input": v.input, "mask": v.mask})
        check_outputs(output / v.name, overlay)
    check_summary_target(output)
    fingerprint = engine_fingerprint(manifest)
    settings = Settings(args.backend, config.memory_size, config.mem_every,
                        config.quality_threshold, config.fit, config.locality,
                        config.quality_score, args.max_frames, args.overlay)
    t_ray = time.perf_counter()
    started = connect(args.address)
    ray_start_s = round(time.perf_counter() - t_ray, 3)
    try:
        plan = plan_workers(args.backend, args.workers, args.threads_per_worker, len(videos))
        config = dataclasses.replace(config, threads=plan.threads)
        with terminate_as_interrupt():  # after ray.init, which installs its own SIGTERM handler
            result = run_corpus(args.engine_dir.absolute(), videos, output, settings, plan,
                                config, fingerprint, progress=not args.quiet)
    finally:
        if started:
            ray.shutdown()
    result.info.update(address=args.address or "local", ray_start_s=ray_start_s)
    path = write_summary(output, result.info, result.outcomes)
    return _report(result, path, args.quiet)


def _report(result: CorpusRun, summary: Path, quiet: bool) -> int:
    """The final line; the exit status."""
    by: dict[str, list[str]] = collections.defaultdict(list)
    for o in result.outcomes:
        by[o.status].append(o.name)
    total = len(result.outcomes)
    counts = ", ".join(f"{len(by[s])} {s}" for s in ("done", "skipped", "failed", "interrupted",
                                                     "not run") if by[s])
    if result.interrupted:
        finished = by["done"] + by["skipped"]
        print(f"interrupted: {len(finished)} of {total} videos finished "
              f"({', '.join(finished) or 'none'}); {counts}; see {summary}", file=sys.stderr)
        return interrupt_exit_code(result.interrupted)
    if by["failed"]:
        first = next(o for o in result.outcomes if o.status == "failed")
        more = f" and {len(by['failed']) - 1} more" if len(by["failed"]) > 1 else ""
        print(f"error: {len(by['failed'])} of {total} videos failed: {first.name} "
              f"({first.error}){more}; {counts}; see {summary}", file=sys.stderr)
        return 1
    if not quiet:
        i = result.info
        rate = ("none segmented in this run" if i["frames_per_s"] is None else
                f"{i['frames']} frames, {i['frames_per_s']} frames/s, "
                f"{i['videos_per_hour']} videos/hour")
        print(f"{total} videos -> {summary.parent}: {counts} ({rate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
