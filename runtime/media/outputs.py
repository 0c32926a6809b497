"""Output folders and files written so that nothing of the user's is lost.

Rule (the same for `runtime/run.py --output` and `export/to_onnx.py --out`): a tool writes into
a hidden staging folder next to its target and moves the result in at the end. If the target
folder already exists, only the files an earlier run of the same tool wrote (listed by that
run's index file: `run.json`, `manifest.json`) are replaced or removed; every other file is left
alone. A file that the new output would overwrite but no earlier run wrote (e.g. the user's own
`00000.png`) makes the tool refuse before it starts. Every path is checked for writability
before any work starts. One run at a time: a target is locked (`OutputLock`) from the first
check to the final move, and a second run into it is refused with a line naming the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from runtime.core.errors import OutputError

# a target's staging is `.<name>.partial-XXXXXXXX` beside it (a staged file's
# `.<stem>.partial-XXXXXXXX<suffix>`): tempfile's eight random characters
STAGING = ".partial-"
_RANDOM = "?" * 8


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, outermost first."""
    out = []
    p = path.resolve().parent
    while not p.exists():
        out.append(p)
        p = p.parent
    return out[::-1]


def _make_parents(path: Path) -> list[Path]:
    """Create `path`'s missing parent folders; return those created, outermost first."""
    missing = _missing_parents(path)
    try:
        path.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_if_empty(missing)
        raise OutputError(f"cannot create the folder of {path}: {_reason(e)}") from None
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    """Remove folders this process created (outermost first in `created`), innermost first and
    only while they are empty: another job (a second corpus worker, a second `run.py`) may be
    staging its own output in a folder this one created."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue  # never made (a failed mkdir) or already gone
        except OSError:
            return  # not empty (someone else's files) or not ours to remove: keep it and above


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, moved onto it when the block succeeds and removed when it
    fails: a reader never sees half a file, and a failed write keeps the old one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{STAGING}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file through `replacing`."""
    with replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)


def refuse_dangling_link(path: Path) -> None:
    """A symbolic link to nothing, the path or a folder above it, looks absent and passes every
    check; then the final move breaks, or the folders it points to are created."""
    for p in (path, *path.absolute().parents):
        if p.is_symlink() and not p.exists():
            raise OutputError(f"output {path}: {p} is a symbolic link to {os.readlink(p)}, "
                              "which does not exist: remove the link or choose another path")


class OutputLock:
    """Exclusive lock on an output path for a run's life, so that two runs (processes, threads
    or Ray workers) cannot both write one folder and leave it mixed.

    An flock on a hidden file beside the target, holding the holder's pid and command line: the
    kernel releases it when the holder dies, however it dies, and a stale file is taken over.
    A target inside another run's locked output (`OUT/00010.png` as an output folder) is
    refused too, unless that run said `nested=True` (a corpus root, whose workers write
    `OUT/<video>`) or is this process's own. Filesystems without flock (some network mounts) run unlocked.
    """

    def __init__(self, target: str | Path, *, nested: bool = False):
        self.target = Path(target)
        self.nested = nested
        self.path = _lock_file(Path(os.path.realpath(self.target)))
        self._fd: int | None = None
        self._released = False
        self._created = _make_parents(self.target)
        try:
            self._acquire()
        except BaseException:
            _remove_if_empty(self._created)
            raise

    def _acquire(self) -> None:
        for _ in range(100):  # retried only when a holder unlinked the file we opened
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise OutputError(f"output {self.target} is in use by another run ({holder}): "
                                  "wait for it to end or choose another output") from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return
                raise OutputError(f"cannot lock {self.target}: {_reason(e)}") from None
            if self._same_file(fd):
                self._fd = fd
                os.ftruncate(fd, 0)
                nests = f" {NESTS}" if self.nested else ""
                command = " ".join(sys.argv)[:500]  # bytes that are not UTF-8 kept as they came
                os.write(fd, f"pid {os.getpid()}{nests}: {command}".encode(errors="surrogateescape"))
                try:
                    self._refuse_inside_another_output()
                except OutputError:
                    self.release()
                    raise
                return
            os.close(fd)
        raise OutputError(f"cannot lock {self.target}: its lock file keeps changing")

    def _refuse_inside_another_output(self) -> None:
        for folder in Path(os.path.realpath(self.target)).parents:
            lock = _lock_file(folder)
            if folder == folder.parent or not lock.is_file():
                continue
            holder = _holder_if_held(lock)
            # this process's own run may (the corpus layout's OUT/<video>/overlay.mp4)
            if holder is not None and NESTS not in holder and not holder.startswith(
                    f"pid {os.getpid()}:"):
                raise OutputError(f"output {self.target} is inside {folder}, which another run "
                                  f"is writing ({holder}): choose another output")

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(f"cannot write next to {self.target}: {_reason(e)}") from None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(fd: int) -> str:
        with contextlib.suppress(OSError):
            text = os.pread(fd, 1000, 0).decode(errors="replace").strip()
            if text:
                return text
        return "its lock file is held"

    def release(self) -> None:
        """Unlink, then unlock: a waiting run that opened the old file sees it is gone. Then
        remove the parent folders made for the target if they are left empty."""
        if self._released:
            return
        self._released = True
        if self._fd is not None:  # None: a filesystem without flock, run unlocked
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
        _remove_if_empty(self._created)


NESTS = "(runs may write inside)"  # in the lock file of an OutputLock(nested=True)


def _lock_file(target: Path) -> Path:
    """The hidden file beside a (resolved) target that OutputLock locks."""
    return target.parent / f".{target.name}.lock"


def _holder_if_held(lock: Path) -> str | None:
    """The holder's line of a lock file another open file holds, else None (probed with a
    non-blocking lock, released at once)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return OutputLock._holder(fd)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_writable_dir(folder: str | Path) -> None:
    """Refuse (OutputError) a folder that cannot be created or written, leaving no trace:
    for tools that write several result files at the end of a long run."""
    folder = Path(folder)
    refuse_dangling_link(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output {folder} exists and is not a folder")
    created = _make_parents(folder / "probe")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {_reason(e)}") from None
    finally:
        _remove_if_empty(created)


def _staging(target: Path, *, folder: bool) -> tuple[Path, str, str]:
    """Where `StagedFolder` / `StagedFile` stage `target`, and the prefix and suffix around
    tempfile's random part: beside its real path (as `OutputLock` keys its lock: a link and its
    destination stage alike); a file keeps the target's own extension, which the overlay's
    codec follows."""
    real = Path(os.path.realpath(target))
    if folder:
        return real.parent, f".{real.name}{STAGING}", ""
    return real.parent, f".{real.stem}{STAGING}", Path(target).suffix


def remove_stale_staging(target: Path, *, folder: bool) -> None:
    """Remove, as far as it can, what an unfinished run into `target` left beside it (one
    killed by SIGKILL, a machine that went down). Only with the target locked: then no live run
    is writing it."""
    where, prefix, suffix = _staging(target, folder=folder)
    for p in where.glob(f"{glob.escape(prefix)}{_RANDOM}{glob.escape(suffix)}"):
        if p.is_symlink() or p.is_dir() != folder:
            continue
        if folder:
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # e.g. another user's, in a shared folder
                p.unlink()


class StagedFolder:
    """A tool's output folder, staged next to the target and moved in by `commit()`.

    owned(): names (relative to the target) that an earlier run of this tool wrote there, read
    from that run's `index` file by the caller, once the target is locked. reserved(name):
    whether the new output may write a file of that name; an existing file it may write but
    that is not owned is refused. The target stays locked until `commit()` or `abort()`.
    """

    def __init__(self, target: str | Path, *, index: str,
                 owned: Callable[[], Iterable[str]] = lambda: (),
                 reserved: Callable[[str], bool] = lambda name: False):
        self.target = Path(target)
        self.index = index
        refuse_dangling_link(self.target)
        if self.target.exists() and not self.target.is_dir():
            raise OutputError(f"output {self.target} exists and is not a folder")
        self._lock = OutputLock(self.target)  # creates the missing parent folders
        try:  # what an earlier run left is read under the lock: no run can be committing now
            self.owned = set(owned())
            self._check_target(reserved)
            remove_stale_staging(self.target, folder=True)
        except BaseException:
            self._lock.release()
            raise
        where, prefix, _ = _staging(self.target, folder=True)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
            self.path.chmod(0o777 & ~_umask())  # mkdtemp makes it private; outputs are ordinary
        except OSError as e:
            self._lock.release()
            raise OutputError(f"cannot write next to {self.target}: {_reason(e)}") from None

    def _check_target(self, reserved: Callable[[str], bool]) -> None:
        if not self.target.is_dir():
            return
        clash = sorted(p.name for p in self.target.iterdir()
                       if p.name not in self.owned and (p.name == self.index or reserved(p.name)))
        if clash:
            raise OutputError(
                f"output {self.target} holds {', '.join(clash[:3])}"
                f"{' ...' if len(clash) > 3 else ''} that no earlier run of this tool wrote: "
                "refusing to overwrite it; choose another output folder")
        if not os.access(self.target, os.W_OK | os.X_OK):
            raise OutputError(f"output {self.target} is not writable")

    def commit(self) -> None:
        """Move the staged files into the target (the index file last); drop stale owned ones."""
        with deferred_signals():
            try:
                self._move_in()
            finally:
                self._lock.release()

    def _move_in(self) -> None:
        if not self.target.exists():
            try:
                self.path.rename(self.target)  # atomic: the whole folder appears at once
                return
            except OSError as e:
                self.abort()
                raise OutputError(f"cannot create {self.target}: {_reason(e)}") from None
        new = sorted(p.name for p in self.path.iterdir())
        try:
            for name in sorted(new, key=lambda n: n == self.index):
                os.replace(self.path / name, self.target / name)
            for name in sorted(self.owned - set(new)):
                stale = self.target / name
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        except OSError as e:
            raise OutputError(f"cannot move the output into {self.target}: "
                              f"{_reason(e)}") from None
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

    def abort(self) -> None:
        """Remove the staging folder (and the parent folders created for it, if left empty)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()


class StagedFile:
    """One output file written under a hidden temporary name in its own folder, renamed by
    `commit()`, replacing the target (the caller decides whether it may: `--overlay` only
    replaces the overlay of an earlier run into the same output, runtime.job)."""

    def __init__(self, target: str | Path):
        self.target = Path(target)
        refuse_dangling_link(self.target)
        if self.target.is_dir():
            raise OutputError(f"{self.target} is a folder, expected a file path")
        self._lock = OutputLock(self.target)  # creates the missing parent folders
        where, prefix, suffix = _staging(self.target, folder=False)
        try:
            remove_stale_staging(self.target, folder=False)
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=where)
            os.close(fd)
            os.chmod(name, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary
        except OSError as e:
            self._lock.release()
            raise OutputError(f"cannot write {self.target}: {_reason(e)}") from None
        self.path = Path(name)

    def commit(self) -> None:
        with deferred_signals():
            try:
                os.replace(self.path, self.target)
            except OSError as e:
                self.abort()
                raise OutputError(f"cannot write {self.target}: {_reason(e)}") from None
            self._lock.release()

    def abort(self) -> None:
        """Remove the staged file (and the parent folders created for it, if left empty)."""
        self.path.unlink(missing_ok=True)
        self._lock.release()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (see `terminate_as_interrupt`)."""


_terminated = threading.Event()  # SIGTERM came (a library may re-raise it as KeyboardInterrupt)


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """A CLI's exit status after an interrupt: the shell's 128 + the signal number (SIGINT 2:
    130, SIGTERM 15: 143)."""
    term = isinstance(e, Terminated) or _terminated.is_set()
    return 128 + (signal.SIGTERM if term else signal.SIGINT)


def as_received(e: KeyboardInterrupt) -> KeyboardInterrupt:
    """The interrupt as the signal that came: SIGTERM's `Terminated` where a library re-raised
    it as a plain KeyboardInterrupt (Ray does), within `terminate_as_interrupt`, so that its
    exit status is still 143 once the block is left."""
    return Terminated() if _terminated.is_set() and not isinstance(e, Terminated) else e


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (a KeyboardInterrupt),
    so the staging folders are finished or removed instead of being left behind. A no-op
    outside the main thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        _terminated.set()
        raise Terminated()

    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        _terminated.clear()


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block (work that must be done whole: renames, a training
    step) is done, then act on them. A block that raises keeps its own error: the held signal
    is dropped then, as the error ends the work anyway and must not be hidden by it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[signal.Signals, FrameType | None]] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    try:
        for s in sigs:
            signal.signal(s, lambda signum, frame: pending.append((signal.Signals(signum), frame)))
        yield
    finally:
        for s in sigs:
            signal.signal(s, old[s])
    for signum, frame in pending[:1]:
        handler = old[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)


def ignore_interrupts() -> None:
    """The program's work is done and in place: from here to its exit (its result line, the
    interpreter's shutdown) a Ctrl-C can undo nothing, so it must not turn a finished run into
    a traceback and a death by signal. SIGTERM keeps its default, so that a shutdown that
    hangs can still be ended. For a program's main() that owns its process (called with
    argv=None, as its console script and `python x.py` call it), never for one called in
    process (a test, demo.py), which goes on after it. Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_whole(block: Callable[[], None]) -> KeyboardInterrupt | None:
    """Run `block` with SIGINT/SIGTERM held (`deferred_signals`) and return the interrupt that
    came meanwhile instead of raising it: the work is done, and the caller ends as interrupted
    with it kept. One that came before the signals were held is raised (nothing was done)."""
    done = False
    try:
        with deferred_signals():
            block()
            done = True
    except KeyboardInterrupt as e:
        if not done:
            raise
        return e
    return None
