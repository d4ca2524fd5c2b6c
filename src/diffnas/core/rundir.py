"""Run directories: atomic writes, an exclusive lock, and the files a search leaves behind.

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed, so
a reader (or a crash) never sees half a file. ``metrics.jsonl`` is rewritten whole at each epoch
for the same reason (it holds one short line per epoch). A search holds an ``fcntl`` lock on
``.lock`` while it writes; the operating system drops it when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import RunError


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], binary: bool = True) -> None:
    """Write ``path`` through ``writer(fileobj)`` atomically (temp file, fsync, rename, dir fsync)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        return self

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
