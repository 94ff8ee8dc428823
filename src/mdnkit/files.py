"""Atomic file writing: a failure leaves the old file, or none, never half a file."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_path", "TEMP_MARKER"]

#: Part of the name of every temporary file :func:`atomic_path` makes, ``.NAME~mdnkit-XXXXXXXX
#: SUFFIX`` beside the target ``NAME``: the mark by which a later write knows a left-over one.
TEMP_MARKER = "~mdnkit-"

#: Without file locks (Windows) a temporary file counts as left over after this many seconds.
_UNLOCKED_STALE_SECONDS = 24 * 3600


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends without an error, move it
    over ``path`` (``os.replace``); when it raises, delete it.  The old file or none, never half.

    * **Durable.** The temporary file is flushed to disk (``fsync``) before the move and the
      folder after it, so after a crash the name holds the old file or the whole new one.
    * **Mode.** The new file keeps the permission bits of the file it replaces (``0600`` stays
      ``0600``; the owner becomes the writer); a new name gets those of an ordinary new file,
      ``0666 & ~umask``.
    * **Symlinks are written through**: when ``path`` is a symbolic link, the file it points to
      is replaced and the link stays (as ``cp`` or a shell's ``>`` would do), so a link such as
      ``latest.mdn -> run3.mdn`` keeps pointing where it did, at the new contents.
    * **No orphans.** The temporary file is named ``.NAME~mdnkit-XXXXXXXX`` + ``suffix`` and
      locked (``flock``) while it is written.  A write killed outright (SIGKILL, power loss)
      leaves it behind, unlocked; the next write of the same target deletes every such
      unlocked file of that target before it starts.  (Without ``fcntl``, on Windows: those
      older than a day; on a file system that refuses locks: none.)

    Example:
        >>> with atomic_path("out.txt") as tmp:
        ...     _ = Path(tmp).write_text("done")
        >>> Path("out.txt").read_text()
        'done'
    """
    target = Path(os.path.realpath(os.fspath(path)))  # through symbolic links
    folder = target.parent
    _remove_left_over(folder, target.name)
    fd, tmp = _locked_temporary(folder, target.name, suffix)
    try:
        yield tmp
        os.chmod(tmp, _mode(target))
        os.fsync(fd)  # the data, whichever handle wrote it
        os.replace(tmp, target)
        _fsync_folder(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)  # releases the lock


def _locked_temporary(folder: Path, name: str, suffix: str) -> tuple[int, str]:
    """A new temporary file for ``name`` in ``folder``, locked: ``(descriptor, path)``.

    Another write's clean-up deletes a temporary file only while it holds the file's lock, so
    a file that lost the race between its creation and its lock has no name once the lock is
    ours (``st_nlink`` 0): then another is made."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}{TEMP_MARKER}", suffix=suffix, dir=folder)
        if fcntl is None:  # pragma: no cover - Windows
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: none taken
            return fd, tmp
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)


def _mode(target: Path) -> int:
    """The permission bits for the new file: the old file's, else ``0666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's entries (the rename) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) do not fsync folders
    finally:
        os.close(fd)


def _remove_left_over(folder: Path, name: str) -> None:
    """Delete the temporary files of ``name`` in ``folder`` that no writer holds any more."""
    pattern = re.compile(re.escape(f".{name}{TEMP_MARKER}") + r"[a-z0-9_]{8}(\..*)?", re.DOTALL)
    try:
        names = [n for n in os.listdir(folder) if pattern.fullmatch(n)]
    except OSError:
        return
    for n in names:
        with contextlib.suppress(OSError):
            _remove_if_unheld(folder / n)


def _remove_if_unheld(path: Path) -> None:
    if fcntl is None:  # pragma: no cover - Windows: by age
        import time

        if time.time() - os.stat(path).st_mtime > _UNLOCKED_STALE_SECONDS:
            os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a writer holds it (or
        # where the file system has no locks: then nothing is deleted)
        os.unlink(path)
    finally:
        os.close(fd)
