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
import stat
import tempfile
import time
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


def output_folder(run_dir: str | os.PathLike, relative: str, what: str = "output folder") -> Path:
    """``run_dir/relative``, made folder by folder, every part a real folder inside ``run_dir``:
    a symbolic link (which would lead the writes outside the folder the user named), a file or a
    FIFO in the way is refused with a :class:`RunError` naming it, as is a name the file system
    cannot hold. For plugins (a logger's event folder) as for diffnas itself."""
    root = Path(run_dir)
    p = root
    for part in Path(relative).parts:
        if part in ("", ".", "..") or os.sep in part:
            raise RunError(f"{what} {root / relative}: {part!r} is not a folder name inside the run directory")
        p = p / part
        with io_errors(p, "make the folder"):
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                os.mkdir(p)
                st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            raise RunError(f"{what} {p} is a symbolic link; refusing to write through it (the outputs must stay "
                           f"inside {root}): remove it, or choose another folder")
        if not stat.S_ISDIR(st.st_mode):
            raise RunError(f"{what} {p} exists and is not a folder; remove it, or choose another folder")
    return p


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

        lock = self.path / self.LOCK
        # never through a link (a planted .lock -> victim would be truncated) and never a FIFO or
        # device (O_NONBLOCK: opening does not wait; fstat then refuses it)
        with io_errors(lock, "open the lock file"):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RunError(f"lock file {lock} is a symbolic link; refusing to use it (remove it if the "
                                   f"run directory is yours)") from None
                raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunError(f"lock file {lock} is not a regular file; refusing to use it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"run directory {self.path} is in use by another search (locked); "
                               f"choose another --out or wait for it to finish") from None
            with io_errors(lock):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
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

    def claim(self, outputs: tuple[str, ...], new: dict[str, str], overwrite: bool = False,
              companions: tuple[str, ...] = ()) -> Path | None:
        """Make room for a new run's ``outputs`` (file names and glob patterns), under the lock.

        An output that exists (other than a file of ``new`` whose content is already what the new run
        writes) means the directory holds an earlier run: refused unless ``overwrite``, and then the
        old files are moved into ``.replaced-<UTC time>/`` inside the directory, whose path is returned
        (delete it with :meth:`drop_replaced` once the new run has its first checkpoint; until then the
        old run is complete there), ``companions`` (files that record no result) with them. Returns
        ``None`` when nothing had to move."""
        found: list[Path] = []
        same: list[Path] = []  # files the new run would write unchanged: moved along, but no reason to refuse
        for pattern in outputs:
            for p in sorted(self.path.glob(pattern)):
                if p.parent == self.path and p.name in new and p.is_file() and not p.is_symlink():
                    try:
                        if p.read_text(encoding="utf-8") == new[p.name]:
                            same.append(p)
                            continue
                    except (OSError, UnicodeDecodeError):
                        pass
                found.append(p)
        if not found:
            return None
        names = ", ".join(str(p.relative_to(self.path)) for p in found[:6]) + (" ..." if len(found) > 6 else "")
        if not overwrite:
            raise RunError(f"run directory {self.path} already holds a run ({names}); continue it with --resume "
                           f"{self.path}, choose another --out, or give --overwrite to replace it (the old files are "
                           f"moved to {self.path}/.replaced-<time>/ and deleted once the new run has its first "
                           f"checkpoint)")
        found += same + [p for pattern in companions for p in sorted(self.path.glob(pattern))]
        backup = self.path / f".replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        with io_errors(backup, "move the old run into"):
            backup.mkdir()
            for p in found:
                dest = backup / p.relative_to(self.path)  # a nested output (a logger's a/b) keeps its place
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, dest)
        return backup

    @staticmethod
    def drop_replaced(backup: Path | None) -> None:
        """Delete the old run :meth:`claim` moved aside (call once the new run has a checkpoint)."""
        if backup is not None:
            import shutil

            shutil.rmtree(backup, ignore_errors=True)

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
