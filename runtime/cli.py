"""What every command-line program of the project shares, so that they fail alike: one
`error:` line and one exit-code scheme. Library code raises; only these programs print and
exit.

Exit codes: 0 done; 1 (EXIT_FAILED) refused or failed, with one `error: ...` line on stderr;
2 a usage error argparse reported (unknown option, missing argument); 130 / 143 stopped by
Ctrl-C / SIGTERM (`runtime.media.outputs.interrupt_exit_code`, the shell's 128 + signal).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from runtime.core.errors import QDMNRuntimeError
from runtime.media.outputs import ignore_interrupts

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C before the program started its work
PROGRAMS = "qdmn.programs"  # entry-point group: each console script's program (pyproject.toml)


def launch() -> NoReturn:
    """Every console script: run the `qdmn.programs` entry point of the script's name. Loading
    it imports torch, OpenCV, ONNX Runtime... for up to seconds, and a Ctrl-C meanwhile ended
    in a traceback through those imports; now in one line. Once the program has returned, its
    work is done: a Ctrl-C while the interpreter shuts down cannot fail it."""
    names = dict.fromkeys(Path(p).name for p in (sys.argv[0], os.path.realpath(sys.argv[0])))
    try:  # the script's name, else the one a link or alias to it leads to
        found = [e for n in names for e in metadata.entry_points(group=PROGRAMS, name=n)]
        if not found:
            sys.exit(fail(f"{' / '.join(names)}: no qdmn program of this name is installed "
                          "(reinstall the project: pip install -e .)"))
        main = found[0].load()
    except KeyboardInterrupt:
        print("interrupted: nothing done", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    code = main()
    ignore_interrupts()
    sys.exit(code)


def one_line(e: BaseException) -> str:
    """An exception as one line: our errors' own message, an OSError's reason and file, others
    prefixed by their type."""
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}{f': {e.filename}' if e.filename else ''}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (QDMNRuntimeError, OSError, ValueError)):
        return text
    return f"{type(e).__name__}: {text}"


def fail(e: BaseException | str) -> int:
    """Print `error: <one line>` on stderr; the exit code of a refused or failed command."""
    print(f"error: {e if isinstance(e, str) else one_line(e)}", file=sys.stderr)
    return EXIT_FAILED


def text_arg(text: str) -> str:
    """An argparse type for a value that may not be empty (an unset shell variable gives one):
    a usage error, where an empty path would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value")
    return text


def path_arg(text: str) -> Path:
    """An argparse type for a file or folder: `text_arg`, as a Path."""
    return Path(text_arg(text))


def size_arg(text: str) -> tuple[int, int]:
    """An argparse type for an image size written `HxW` (240x432): a usage error, not a
    traceback, when it is not two positive integers."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 240x432") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be >= 1")
    return h, w


def warnings_as_lines() -> None:
    """Show warnings as `warning: <message>` lines, not Python's two-line format, each on a
    line of its own while a progress bar is drawn (tqdm.write moves the bar below it)."""

    def show(message: Warning | str, category: type[Warning], *rest: object,
             **kw: object) -> None:
        tqdm.write(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]
