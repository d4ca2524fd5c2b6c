"""Run directories: atomic writes, an exclusive lock, and the files a search leaves behind.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed, so
a reader (or a crash) never sees half a file. ``metrics.jsonl`` is rewritten whole at each epoch
for the same reason (it holds one short line per epoch). A search holds an ``fcntl`` lock on
``.lock`` while it writes; the operating system drops it when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import RunError

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def io_errors(path: str | os.PathLike, doing: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permission denied ...) into a :class:`RunError` naming ``path``,
    so the CLI prints one line and exits 2 instead of a traceback."""
    try:
        yield
    except RunError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = {errno.ENOSPC: " (the disk is full; free space and resume with diffnas search --resume)",
                errno.EDQUOT: " (disk quota exceeded)",
                errno.EACCES: " (permission denied)", errno.EROFS: " (read-only file system)"}.get(exc.errno or 0, "")
        raise RunError(f"cannot {doing} {path}: {reason}{hint}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], binary: bool = True) -> None:
    """Write ``path`` through ``writer(fileobj)`` atomically (temp file, fsync, rename, dir fsync).

    The old file stays intact until the rename; an ``OSError`` becomes a :class:`RunError`."""
    path = Path(path)
    with io_errors(path):
        _atomic_write(path, writer, binary)


def _atomic_write(path: Path, writer: Callable[[Any], None], binary: bool) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class RunDir:
    """An output directory owned by one search at a time."""

    LOCK = ".lock"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def prepare(self) -> "RunDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"output directory {self.path} is not writable: {exc.strerror or exc}") from None
        return self

    def lock(self) -> "RunDir":
        import fcntl

        with io_errors(self.path / self.LOCK, "open the lock file"):
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"run directory {self.path} is in use by another search (locked); "
                           f"choose another --out or wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._remove_stale_temporaries()
        return self

    def _remove_stale_temporaries(self) -> None:
        """Delete the half-written temporaries a killed search left behind (we hold the lock, so no
        other search is writing them)."""
        for tmp in self.path.glob(f".*{TMP_SUFFIX}"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def file(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> "RunDir":
        return self.prepare().lock()

    def __exit__(self, *exc: Any) -> None:
        self.unlock()
