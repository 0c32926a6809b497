"""Paths a browser names, confined to the root the server was started with: nothing outside it
is ever listed or read, whether named with `..`, as an absolute path or through a symbolic link
that points out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from natsort import natsorted

from runtime.core.errors import InputError
from runtime.media.sources import FRAME_EXTS, is_utf8


class OutsideRoot(InputError):
    """A path that leaves the root (or does not exist under it)."""


def _real(path: Path) -> Path:
    """The path with every link and `..` resolved: what would really be read."""
    return Path(os.path.realpath(path))


def under_root(root: Path, name: str) -> Path:
    """The real path of `name` (relative to `root`; "" is the root itself), refused unless it
    exists and it and everything it resolves through stay inside `root`."""
    if "\0" in name:
        raise OutsideRoot("a path may not contain a NUL character")
    if os.path.isabs(name) or Path(name).drive:
        raise OutsideRoot(f"{name}: absolute paths are refused; name a path inside the root "
                          "folder the server was started with")
    real_root = _real(root)
    real = _real(real_root / name)
    if not real.is_relative_to(real_root):
        raise OutsideRoot(f"{name} is outside the root folder the server was started with")
    if not real.exists():
        raise OutsideRoot(f"{name} does not exist under the root folder")
    return real


def check_inside(root: Path, files: list[Path]) -> None:
    """Refuse a folder of frames some of whose files are links that point out of `root`."""
    real_root = _real(root)
    for f in files:
        if not _real(f).is_relative_to(real_root):
            raise OutsideRoot(f"{f.name} links to a file outside the root folder: refused")


@dataclass(frozen=True)
class Entry:
    """One line of the file picker."""

    name: str
    kind: str  # "folder", "frames" (a folder holding frame images) or "file"


def list_folder(root: Path, name: str) -> list[Entry]:
    """What the picker shows in a folder under `root`: sub-folders and files, not hidden ones,
    not links that point out of the root, not names that are not UTF-8 (a page cannot name
    them back). A sub-folder this user may not read is listed as a folder; opening it says so."""
    folder = under_root(root, name)
    if not folder.is_dir():
        raise OutsideRoot(f"{name} is not a folder")
    real_root = _real(root)
    try:
        children = natsorted(folder.iterdir(), key=lambda p: p.name.lower())  # 2.jpg before 10.jpg
    except OSError as e:
        raise InputError(f"{name or 'the root folder'}: cannot list it ({e.strerror or e})") from None
    out = []
    for p in children:
        real = _real(p)
        if (p.name.startswith(".") or not is_utf8(p.name) or not real.is_relative_to(real_root)
                or not real.exists()):
            continue
        if real.is_dir():
            try:
                frames = any(c.suffix.lower() in FRAME_EXTS for c in real.iterdir() if c.is_file())
            except OSError:
                frames = False
            out.append(Entry(p.name, "frames" if frames else "folder"))
        elif real.is_file():
            out.append(Entry(p.name, "file"))
    return out
