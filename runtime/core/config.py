"""Runtime configuration: the knobs that do not change any graph's shape."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from runtime.core.errors import RuntimeConfigError
from runtime.core.geometry import DEFAULT_FIT, FITS
from runtime.core.locality import DEFAULT_LOCALITY
from runtime.core.manifest import Manifest
from runtime.core.memory_policy import DEFAULT_QUALITY_THRESHOLD
from runtime.core.quality import QUALITY_SCORES


def default_threads() -> int:
    """CPUs this process may run on: its affinity set (a container's or `taskset`'s CPUs),
    not the host's core count, which oversubscribes a restricted process."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def check_threads(threads: int) -> int:
    """Refuse more CPU threads than this process may use (RuntimeConfigError): every one is an
    OS thread of each graph's session, and thousands exhaust the machine's process ids. Checked
    where the threads start (a corpus driver may ask for more than its own machine has)."""
    cores = default_threads()
    if threads > cores:
        raise RuntimeConfigError(f"threads={threads}: more than the {cores} CPU core(s) this "
                                 f"process may use; choose 1..{cores}")
    return threads


@dataclass(frozen=True)
class RuntimeConfig:
    """Memory policy and execution settings; `None` means "the manifest's value".

    memory_size may only shrink the bank the graphs were exported for (unused dynamic slots stay
    invalid); everything shape-related comes from the manifest alone.
    """

    memory_size: int | None = None  # dynamic (long-term) slots used, <= manifest.memory_size
    mem_every: int | None = None  # min frames between two long-term insertions
    quality_threshold: float | None = None  # sigma in [0, 1]: accept when normalised score >= it
    threads: int | None = None  # CPU threads for CPU backends (None: default_threads())
    device: int = 0  # GPU ordinal for GPU backends
    # ORT CPU worker threads busy-wait between ops when True: a little lower latency on an idle,
    # dedicated machine, but several times slower per frame when the cores are shared
    # (docs/runtime.md, "Backends").
    spin: bool = False
    # How frames of another aspect ratio than the graphs' enter them (runtime.core.geometry):
    # "letterbox" or "stretch"; None: DEFAULT_FIT.
    fit: str | None = None
    # Width of each object's window around its previous mask, per sqrt(object area)
    # (runtime.core.locality); 0 switches the prior off; None: DEFAULT_LOCALITY.
    locality: float | None = None
    # What the gate scores a mask by (runtime.core.quality): "qam*confidence" or the paper's "qam";
    # None: the manifest's (the paper's for an official checkpoint, else DEFAULT_QUALITY_SCORE).
    quality_score: str | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise RuntimeConfigError(f"{name}={v!r}: expected an integer >= 1")

        for name in ("memory_size", "mem_every", "threads"):
            positive_int(name)
        q = self.quality_threshold
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float))
                              or not math.isfinite(q) or not 0.0 <= q <= 1.0):
            # The score is a frame's mean quality over the first frame's: 0 accepts every
            # candidate, 1 only frames at least as good as the annotated one; above 1 almost
            # nothing would ever enter the memory.
            raise RuntimeConfigError(f"quality_threshold={q!r}: expected a number in [0, 1] "
                                     f"(the paper's sigma is {DEFAULT_QUALITY_THRESHOLD})")
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise RuntimeConfigError(f"device={self.device!r}: expected an integer >= 0")
        if not isinstance(self.spin, bool):
            raise RuntimeConfigError(f"spin={self.spin!r}: expected True or False")
        loc = self.locality
        if loc is not None and (isinstance(loc, bool) or not isinstance(loc, (int, float))
                                or not math.isfinite(loc) or loc < 0):
            raise RuntimeConfigError(f"locality={loc!r}: expected a number >= 0 (0: off; "
                                     f"default {DEFAULT_LOCALITY})")
        if self.fit is not None and self.fit not in FITS:
            raise RuntimeConfigError(f"fit={self.fit!r}: expected one of {', '.join(FITS)}")
        if self.quality_score is not None and self.quality_score not in QUALITY_SCORES:
            raise RuntimeConfigError(f"quality_score={self.quality_score!r}: expected one of "
                                     f"{', '.join(QUALITY_SCORES)}")

    def resolve(self, manifest: Manifest) -> RuntimeConfig:
        """Fill every `None` from the manifest and reject values the graphs cannot honour."""
        if self.memory_size is not None and self.memory_size > manifest.memory_size:
            raise RuntimeConfigError(
                f"memory_size={self.memory_size} exceeds the {manifest.memory_size} dynamic slots "
                f"the graphs were exported with: use --memory-size <= {manifest.memory_size} or "
                f"re-export with `python export/to_onnx.py CKPT --memory-size {self.memory_size}`")
        return dataclasses.replace(
            self,
            memory_size=self.memory_size if self.memory_size is not None else manifest.memory_size,
            mem_every=self.mem_every if self.mem_every is not None else manifest.mem_every,
            quality_threshold=(float(self.quality_threshold) if self.quality_threshold is not None
                               else float(manifest.quality_threshold)),
            threads=self.threads if self.threads is not None else default_threads(),
            fit=self.fit or DEFAULT_FIT,
            locality=float(self.locality) if self.locality is not None else DEFAULT_LOCALITY,
            quality_score=self.quality_score or manifest.quality_score,
        )
