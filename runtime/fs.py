"""Writing files and directories so that a reader of the path finds the old version or the new one, whole.

- `AtomicFile` / `write_bytes_atomic` / `write_json_atomic`: the content goes to a temporary file beside
  the target, is flushed to disk (fsync) and renamed over the target. A rename within one directory is
  atomic, so opening the path gives the old file or the new one, never a part, and a failed write
  leaves the old file as it was.
- `temp_dir_beside` + `publish_dir`: a directory is built under a temporary name beside its target, then put
  in place. Where the system can swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`, on
  ext4, xfs, btrfs, tmpfs and overlayfs among others) there is no moment at which the path is missing:
  a reader finds the old directory or the new one. Elsewhere the old directory is renamed aside and the
  new one renamed in: two renames, between which the path is briefly missing (the old version is kept
  until the new one is in place and restored if that fails). Either way the old version is deleted only
  after the new one is in place.

A reader that opens several files of a directory by path while it is replaced may get some from the old
version and some from the new one; the model directory's manifest holds the model's sha256, so a
mixed read fails the Scorer's hash check rather than scoring with the wrong files.

New files and directories get the mode a plain `open()` / `mkdir()` would give them (0o666 / 0o777
less the umask), not the 0600 / 0700 of `tempfile`, so whoever serves or reads the result can.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any, TypeVar

_Output = TypeVar("_Output", bound="CommitOnSuccess")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# errno values with which renameat2 says "not here" (old kernel or libc, or a file system without it)
_NO_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def _umask() -> int:
    """The process's umask. Read from /proc where it can be: setting it to read it (the portable way)
    changes it for every thread for a moment."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class CommitOnSuccess(ABC):
    """A context manager for an output that is `commit()`ed when its block succeeds and `discard()`ed
    when it raises."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def discard(self) -> None: ...

    def __enter__(self: _Output) -> _Output:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class AtomicFile(CommitOnSuccess):
    """A file written under a temporary name beside `path` and renamed over `path` by `commit()`.

    `mode` "wb" or "w" (then `encoding` and `newline` as for `open`). As a context manager it commits on
    success and discards on an exception. Errors name `path`, not the temporary file.
    """

    def __init__(self, path: str | Path, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from e
        self._tmp: str | None = tmp
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            self.file: IO[Any] = open(fd, mode, encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise

    def commit(self) -> None:
        """Flush to disk and rename over `path`; on failure the temporary file is removed."""
        if self._tmp is None:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.discard()
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        self._tmp = None

    def discard(self) -> None:
        if self._tmp is not None:
            self.file.close()
            Path(self._tmp).unlink(missing_ok=True)
            self._tmp = None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through an AtomicFile, creating missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as out:
        out.file.write(data)


def write_json_atomic(path: str | Path, obj: object) -> None:
    """`obj` as indented JSON (and a final newline) through `write_bytes_atomic`."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def temp_dir_beside(target: str | Path) -> Path:
    """A new empty directory beside `target` (so it can be renamed there) to build `target`'s next version
    in, with the mode a plain mkdir would give; the caller removes it if it is not published."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def publish_dir(tmp: str | Path, target: str | Path) -> None:
    """Put the finished directory `tmp` at `target` (same parent directory), replacing whatever is there;
    the old version is deleted once the new one is in place. See the module docstring for what a
    concurrent reader of `target` sees."""
    tmp, target = Path(tmp), Path(target)
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        _remove(tmp)  # which now holds the old version
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, aside / target.name)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside / target.name, target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one step; False where this system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn
