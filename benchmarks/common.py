"""Shared pieces of the speed and long-video benchmarks: inputs, machine facts, memory probes.

Torch-free at import time (the exporter and the PyTorch reference are imported only by the
functions that need them), so a benchmark that only drives the runtime starts quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.datasets import DEMO_SPLIT, PROJECT_ROOT, demo_root
from runtime.cli import path_arg
from runtime.core.config import default_threads
from runtime.core.geometry import same_aspect
from runtime.core.manifest import file_sha256
from runtime.media.davis import DavisLayout, list_sequences
from runtime.media.outputs import write_atomic
from runtime.media.sources import in_name_order
from runtime.options import add_execution_options

REPO = PROJECT_ROOT
DEFAULT_OUT = REPO / "results"


class BenchmarkError(Exception):
    """A benchmark cannot run as asked (bad input, mismatched checkpoint, missing engine)."""


def portable_path(path: str | Path) -> str:
    """How a result file names a path: relative to the repository when inside it (results are
    committed and compared across machines), else as given."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def parse_ints(text: str, what: str) -> list[int]:
    """'5,10,25' -> [5, 10, 25] (positive, deduplicated, in the given order)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise BenchmarkError(f"{what}: {part!r} is not an integer") from None
        if v < 1:
            raise BenchmarkError(f"{what}: {v} must be >= 1")
        if v not in out:
            out.append(v)
    return out


# ------------------------------------------------------------------------------------ input
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: execution settings, the clip, the output folder."""
    add_execution_options(p, ("threads", "device", "spin"))
    p.add_argument("--input", type=path_arg, default=None,
                   help="frames folder or video (default: the demo's one-object clip, "
                        "evaluation.datasets.demo_root)")
    p.add_argument("--mask", type=path_arg, default=None,
                   help="first-frame mask (default: the DAVIS annotation of --input)")
    p.add_argument("--max-source-frames", type=int, default=200,
                   help="decode at most this many input frames (the rest of the video loops)")
    p.add_argument("--out", type=path_arg, default=DEFAULT_OUT, help="output folder")


@dataclass
class Clip:
    """Decoded source frames (RGB uint8, original size) and the first frame's object ids."""

    frames: list[np.ndarray]
    mask: np.ndarray  # (H0, W0) uint8 object ids
    source: str
    mask_path: str

    def ping_pong(self, t: int) -> np.ndarray:
        """Frame t of the source played forward, backward, forward...: motion stays continuous
        (no jump back to frame 0), and frame 0 is the annotated one."""
        n = len(self.frames)
        if n == 1:
            return self.frames[0]
        period = 2 * (n - 1)
        i = t % period
        return self.frames[i if i < n else period - i]

    def video(self, length: int) -> list[np.ndarray]:
        """`length` frames (references into `frames`, no copies)."""
        return [self.ping_pong(t) for t in range(length)]


def default_input() -> Path:
    """The demo's one-object clip (blackswan from the DAVIS data beside the project, else a
    generated clip)."""
    root = demo_root()[0]
    layout = DavisLayout(root)
    return layout.frames_dir(list_sequences(root, layout.split_file(DEMO_SPLIT))[0])


def davis_mask_for(frames_dir: Path) -> Path | None:
    """A DAVIS-layout `.../JPEGImages/<res>/<seq>` folder -> its first annotation, else None."""
    found = DavisLayout.of_frames_dir(Path(frames_dir).resolve())
    if found is None:
        return None
    layout, seq = found
    first = in_name_order(layout.annotations_dir(seq).glob("*.png"))[:1]
    return first[0] if first else None


def load_clip(input_path: str | Path | None, mask_path: str | Path | None,
              max_frames: int) -> Clip:
    """Decode up to `max_frames` frames of a folder or video and read the first-frame mask.

    input_path None: the demo's one-object clip. mask_path None: the DAVIS annotation of a
    `JPEGImages/<res>/<seq>` folder."""
    from runtime.core.errors import QDMNRuntimeError
    from runtime.media.masks import object_ids, read_mask
    from runtime.media.sources import open_source

    src = Path(input_path) if input_path is not None else default_input()
    if not src.exists():
        raise BenchmarkError(f"input {src} not found")
    if mask_path is None:
        found = davis_mask_for(src) if src.is_dir() else None
        if found is None:
            raise BenchmarkError(f"--mask is required: {src} is not a DAVIS-layout "
                                 "JPEGImages/<res>/<seq> folder with annotations")
        mask_path = found
    try:
        source = open_source(str(src))
        if source.live:
            raise BenchmarkError(f"{src}: a live source cannot be replayed; record it first")
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) >= max_frames:
                break
        mask = read_mask(mask_path)
    except QDMNRuntimeError as e:
        raise BenchmarkError(str(e)) from None
    if not frames:
        raise BenchmarkError(f"{src}: no frames")
    (mh, mw), (fh, fw) = mask.shape, frames[0].shape[:2]
    if not same_aspect((mh, mw), (fh, fw)):
        raise BenchmarkError(f"mask {mask_path} is {mw}x{mh} but the frames are {fw}x{fh}")
    if not object_ids(mask):
        raise BenchmarkError(f"mask {mask_path} marks no object")
    return Clip(frames, mask, portable_path(src), portable_path(mask_path))


# ---------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """Resident set size of this process now (psutil if installed, else /proc/self/statm)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return psutil.Process().memory_info().rss / 2**20
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (the kernel's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


class DeviceMemory:
    """GPU memory this process holds, sampled through NVML or nvidia-smi (None if neither).

    Each sample costs a driver query (~1 ms with NVML, tens of ms with nvidia-smi): take them
    outside the timed region and not every frame."""

    def __init__(self, device_id: int = 0):
        self.pid = os.getpid()
        self.device_id = device_id
        self.method: str | None = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
            self._nvml, self.method = pynvml, "nvml"
        except Exception:  # noqa: BLE001 - missing module, library or driver all mean "no NVML"
            if shutil.which("nvidia-smi"):
                self.method = "nvidia-smi"

    def sample_mb(self) -> float | None:
        try:
            if self.method == "nvml":
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                used = [p.usedGpuMemory for p in procs if p.pid == self.pid and p.usedGpuMemory]
                return sum(used) / 2**20 if used else None
            if self.method == "nvidia-smi":
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                     "--format=csv,noheader,nounits", f"--id={self.device_id}"],
                    capture_output=True, text=True, timeout=10, check=False).stdout
                used = [float(b) for a, b in (line.split(",") for line in out.splitlines()
                                              if "," in line) if int(a) == self.pid]
                return sum(used) if used else None
        except Exception:  # noqa: BLE001 - a failed probe must not end a benchmark
            return None
        return None


# ----------------------------------------------------------------------------- machine info
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions that decide int8/bf16 speed on a CPU."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8", "avx512_fp16")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_info(threads: int) -> dict[str, Any]:
    """What a reader needs to compare two benchmark JSONs."""
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "threads": threads,
        "memory_gib": mem_total,
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {k: v for k, v in {
            "numpy": np.__version__, "onnxruntime": ort, "openvino": _version("openvino"),
            "torch": _version("torch"), "tensorrt": _version("tensorrt"),
            "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        }.items() if v},
        "psutil": _version("psutil") is not None,
        # Other processes' load when the results were written: on a shared machine, a run at
        # load ~2 on 2 cores and one at load 5 are not comparable.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
        else None,
    }


# ---------------------------------------------------------------------------------- engines
def check_checkpoint(manifest: Any, checkpoint: str | Path) -> str:
    """The checkpoint's sha256; raises if the engine was exported from another checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise BenchmarkError(f"checkpoint {path} not found")
    sha = file_sha256(path)
    if manifest.checkpoint_sha256 and manifest.checkpoint_sha256 != sha:
        raise BenchmarkError(
            f"{path} (sha256 {sha[:12]}) is not the checkpoint the engine was exported from "
            f"(manifest: {manifest.checkpoint_sha256[:12]}): the comparison would be between "
            "two different models")
    return sha


def ensure_engine(checkpoint: str | Path, root: str | Path, *, size: tuple[int, int],
                  max_objects: int, memory_size: int, precision: str = "fp32",
                  calib_frames: str | Path | None = None, opset: int = 17,
                  sha256: str | None = None) -> Path:
    """An exported engine dir for this configuration, reused from `root` when one matches."""
    from runtime.core.manifest import Manifest, ManifestError

    sha = sha256 or file_sha256(checkpoint)
    h, w = size
    d = Path(root) / f"{precision}-{h}x{w}-n{max_objects}-m{memory_size}-{sha[:12]}"
    try:
        m = Manifest.load(d)
        if (m.checkpoint_sha256, m.precision, m.memory_size, m.max_objects, m.height,
                m.width) == (sha, precision, memory_size, max_objects, h, w):
            return d
    except ManifestError:
        pass
    from export.to_onnx import export_checkpoint

    export_checkpoint(checkpoint, d, size=size, max_objects=max_objects, memory_size=memory_size,
                      precision=precision, calib_frames=calib_frames, opset=opset)
    return d


def calibration_folder(clip: Clip, workdir: Path, count: int = 8) -> Path:
    """A folder of the clip's first frames (int8 calibration needs image files)."""
    src = Path(clip.source)
    if src.is_dir():
        return src
    import cv2

    d = workdir / "calib"
    d.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip.frames[:count]):
        cv2.imwrite(str(d / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return d


# ----------------------------------------------------------------------------------- output
def write_json(path: Path, obj: Any) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i])
                         for i, v in enumerate(values))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or None if not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
