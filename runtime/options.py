"""The runtime's settings (`RuntimeConfig`) and where it runs (backend, threads, device) as
command-line options, declared once for every command that runs the graphs (`runtime/run.py`,
`runtime/batch.py`, `benchmarks/evaluate.py`, the benchmarks), so that their names, help and
defaults cannot drift apart."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.backends import BACKENDS
from runtime.core.config import RuntimeConfig
from runtime.core.geometry import DEFAULT_FIT, FITS
from runtime.core.locality import DEFAULT_LOCALITY
from runtime.core.manifest import Manifest
from runtime.core.quality import DEFAULT_QUALITY_SCORE, QUALITY_SCORES

# RuntimeConfig field -> how it is asked for; None defaults mean "the manifest's value".
_OPTIONS: dict[str, dict[str, Any]] = {
    "memory_size": {"type": int, "help": "dynamic memory slots (<= the manifest's)"},
    "mem_every": {"type": int, "help": "min frames between long-term insertions"},
    "quality_threshold": {"type": float, "help": "sigma: min normalised quality"},
    "fit": {"choices": FITS,
            "help": f"frames of another aspect ratio than the graphs' (default {DEFAULT_FIT}: "
                    "padded, masks cropped back; stretch: resized, distorted)"},
    "locality": {"type": float,
                 "help": "width of each object's window around its previous mask, per sqrt of "
                         f"its area (default {DEFAULT_LOCALITY}; 0: off)"},
    "quality_score": {"choices": QUALITY_SCORES,
                      "help": "what the memory gate scores a mask by: "
                              f"{DEFAULT_QUALITY_SCORE} (the QAM score times the decoder's "
                              "confidence in the mask) or qam (the paper's score alone); "
                              "default the manifest's: qam for an official checkpoint"},
}


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--memory-size, --mem-every, --quality-threshold, --fit, --locality, --quality-score (all
    default None: the manifest's or the runtime's default)."""
    for field, spec in _OPTIONS.items():
        parser.add_argument("--" + field.replace("_", "-"), default=None, **spec)


def runtime_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Those options' values as `RuntimeConfig` keyword arguments."""
    return {field: getattr(args, field) for field in _OPTIONS}


# Where the graphs run. --backend lists its choices in the help and is checked by
# runtime.backends (one `error:` line naming them), not by argparse (a usage message).
_EXECUTION: dict[str, dict[str, Any]] = {
    "backend": {"default": "auto",
                "help": f"one of {', '.join(BACKENDS)} (default %(default)s: the fastest here)"},
    "threads": {"type": int, "help": "CPU threads of CPU backends (default and maximum: the "
                                     "cores this process may use)"},
    "device": {"type": int, "default": 0, "help": "GPU ordinal (GPU backends)"},
    "spin": {"action": "store_true",
             "help": "ORT CPU threads busy-wait: a little faster on an idle, dedicated machine, "
                     "much slower on a shared one"},
}


def runtime_config(args: argparse.Namespace, manifest: Manifest) -> RuntimeConfig:
    """The settings a program's options give (`add_runtime_options`, `add_execution_options`
    with threads, device and spin), resolved against the graphs' manifest."""
    return RuntimeConfig(**runtime_settings(args), threads=args.threads, device=args.device,
                         spin=args.spin).resolve(manifest)


def add_execution_options(parser: argparse.ArgumentParser,
                          names: tuple[str, ...] = ("backend", "threads", "device", "spin"),
                          backend_default: str = "auto") -> None:
    """--backend, --threads, --device, --spin (those in `names`)."""
    for name in names:
        spec = dict(_EXECUTION[name])
        if name == "backend":
            spec["default"] = backend_default
        parser.add_argument("--" + name, **spec)
