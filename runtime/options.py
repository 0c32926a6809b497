"""The runtime's settings (`RuntimeConfig`) as command-line options, declared once for every
command that runs the graphs (`runtime/run.py`, `runtime/batch.py`, `benchmarks/evaluate.py`),
so that their names, help and defaults cannot drift apart."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.geometry import DEFAULT_FIT, FITS
from runtime.locality import DEFAULT_LOCALITY
from runtime.quality import DEFAULT_QUALITY_SCORE, QUALITY_SCORES

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
