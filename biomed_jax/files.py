"""Writing outputs safely: each appears whole or not at all, and nothing that is not ours is touched.

Ownership (`owned`): every output, a file or a directory, is written under a claim: a lock file
beside it, `.<name>.biomed_jax-lock`, on which the writer holds an exclusive `flock` and in which
it records itself (library, host, pid, start time). A second writer of the same output is refused
with `OutputBusyError` naming the owner, or waits for it (`wait_s`). A claim's temporaries are
named after its output with the same fixed infix: `.<name>.biomed_jax-tmp` (a file being written),
`.<name>.biomed_jax-new` and `-old` (a directory being built, the one it replaces). A killed writer
leaves them and its lock file behind; the next claim of the same output, whose lock is then free
and whose lock file records a biomed_jax writer, removes exactly those temporaries (or, for a
writer killed between a directory's two renames, puts `-old` back in its place). Nothing else
is ever removed, and no directory is ever listed to look for leftovers.

Atomic: a file is written under its temporary name, given the usual permissions (0666 / 0777 less
the umask), fsynced, renamed onto its target, and the directory holding it fsynced
(`atomic_path`); a directory is built whole beside its target and replaces it (`replace_dir`).
A failure removes the temporary. Imports only `biomed_jax.errors` (the bottom of the house).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from biomed_jax.errors import OutputBusyError, OutputError

MARK = "biomed_jax"  # the infix of every lock file and temporary this library makes
TEMPORARIES = ("tmp", "new", "old")
# How long a single-file write waits for another writer of the same file (a small file: seconds).
FILE_WAIT_S = 600.0
_RECORD_BYTES = 4096


def umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a file or a directory (its entries: renames into it) to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling(target: Path, kind: str) -> Path:
    """The lock file ("lock") or a temporary ("tmp", "new", "old") of `target`, beside it."""
    return target.parent / f".{target.name}.{MARK}-{kind}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A held claim on `target`: its lock file, and its temporaries by kind."""

    target: Path
    lock: Path

    def temporary(self, kind: str) -> Path:
        return sibling(self.target, kind)


_HELD: dict[Path, tuple[Claim, int]] = {}  # this process's claims by lock file: (claim, thread)
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def owned(target: str | Path, *, wait_s: float = 0.0) -> Iterator[Claim]:
    """Hold the claim on `target` (a file or directory, existing or not) for the block.

    Another holder, in any process (or another thread of this one), makes this wait up to
    `wait_s` seconds, then raise `OutputBusyError` naming it. A claim held by this thread is
    re-entered. Taking a free claim first removes the temporaries a killed biomed_jax writer of
    `target` left (and nothing else); leaving it removes the lock file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = Path(os.path.realpath(target.parent)) / target.name
    lock = sibling(target, "lock")
    with _HELD_GUARD:
        claim, thread = _HELD.get(lock, (None, None))
    if claim is not None and thread == threading.get_ident():
        yield claim  # re-entered: the outermost block releases it
        return
    fd = _acquire(target, lock, wait_s)
    claim = Claim(target, lock)
    try:
        _take_over(fd, claim)
    except BaseException:
        if os.fstat(fd).st_size == 0:  # empty (made just now): remove it; else it is not ours
            with contextlib.suppress(OSError):
                os.unlink(lock)
        os.close(fd)
        raise
    with _HELD_GUARD:
        _HELD[lock] = (claim, threading.get_ident())
    try:
        yield claim
    finally:
        with _HELD_GUARD:
            _HELD.pop(lock, None)
        for kind in ("tmp", "new"):  # ours: partial outputs a failed writer left
            _remove(claim.temporary(kind))
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _acquire(target: Path, lock: Path, wait_s: float) -> int:
    """An fd of `lock` holding its exclusive flock (the file re-created if a holder removed it
    while this process waited)."""
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(lock, flags, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read_record(fd)
            for _ in range(20):  # the holder records itself right after taking the lock
                if record is not None:
                    break
                time.sleep(0.05)
                record = _read_record(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise OutputBusyError(
                    errno.EBUSY,
                    f"{target} is being written by another biomed_jax process "
                    f"({_describe(record)}; lock file {lock.name}): wait for it to finish, or "
                    "choose another output",
                    str(target),
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            continue
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OutputError(
                    e.errno,
                    f"cannot lock {lock}: the file system does not support file locks "
                    f"({os.strerror(e.errno)}), so concurrent writers of {target.name} could "
                    "not be told apart; write to a local or lock-capable file system",
                    str(lock),
                ) from e
            raise
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino:
                return fd
        os.close(fd)  # the holder removed the file we locked: lock the new one


def _read_record(fd: int) -> dict[str, Any] | None:
    """The writer a lock file records; None when it is empty; {} when it is not a record of ours."""
    data = os.pread(fd, _RECORD_BYTES + 1, 0)
    if not data:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("library") == MARK else {}


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "owner not recorded yet"
    fields = (str(record.get(k))[:100] for k in ("pid", "host", "started"))
    return "pid {} on host {}, since {}".format(*fields)


def _take_over(fd: int, claim: Claim) -> None:
    """With the lock held: remove what the previous (killed) writer left, if its lock file says
    it was biomed_jax; refuse a lock file or temporaries biomed_jax cannot vouch for; then
    record this writer."""
    record = _read_record(fd)
    if record == {}:
        raise OutputError(
            errno.EEXIST,
            f"{claim.lock} exists and is not a biomed_jax lock file: refusing to write "
            f"{claim.target.name} beside it (remove it, or choose another output)",
            str(claim.lock),
        )
    left = [claim.temporary(k) for k in TEMPORARIES if os.path.lexists(claim.temporary(k))]
    if left and record is None:
        raise OutputError(
            errno.EEXIST,
            f"{left[0]} exists, but no biomed_jax lock file says a writer of ours made it: "
            "refusing to remove it (remove it yourself, or choose another output)",
            str(left[0]),
        )
    old = claim.temporary("old")
    if old in left and not os.path.lexists(claim.target):  # killed between replace_dir's renames
        os.replace(old, claim.target)  # the output it was replacing comes back whole
        left.remove(old)
    for path in left:
        _remove(path)
    mine = {
        "library": MARK,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": claim.target.name[:200],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode("utf-8")[:_RECORD_BYTES], 0)


def _remove(path: Path) -> None:
    """Remove one temporary of ours: a directory with its contents, else the entry itself (a
    symlink is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, wait_s: float = FILE_WAIT_S) -> Iterator[Path]:
    """Yield a temporary path beside `path`, under the claim on `path`; if the block succeeds,
    the file written there gets the usual permissions, is fsynced and renamed onto `path`. On
    failure it is removed."""
    path = Path(path)
    with owned(path, wait_s=wait_s) as claim:
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR, "is a directory, not a file to replace", str(path)
            )
        tmp = claim.temporary("tmp")
        try:
            with open(tmp, "xb"):
                pass
            yield tmp
            os.chmod(tmp, 0o666 & ~umask())
            fsync_path(tmp)
            os.replace(tmp, claim.target)
            fsync_path(claim.target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def real_target(target: str | Path) -> Path:
    """`target`, or where it points when it is a symlink (the link itself is kept)."""
    target = Path(target)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


@contextlib.contextmanager
def replace_dir(
    target: str | Path, replaceable: Callable[[Path], bool], *, wait_s: float = 0.0
) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`, under the claim on `target`; if the
    block succeeds, it replaces `target` whole (files fsynced, usual permissions). An existing
    `target` must be empty or `replaceable(target)`, else FileExistsError (checked before and
    after the block). A symlink at `target` is followed: the directory it points to is replaced.
    """
    target = real_target(target)

    def check() -> None:
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not replaceable(target):
            raise FileExistsError(
                f"{target} is not empty and not an earlier output of this command: refusing to "
                "write into it (choose a new or empty directory, or remove it)"
            )

    with owned(target, wait_s=wait_s) as claim:
        target = claim.target
        check()
        new, old = claim.temporary("new"), claim.temporary("old")
        new.mkdir()
        try:
            yield new
            os.chmod(new, 0o777 & ~umask())
            for file in new.rglob("*"):
                fsync_path(file)
            fsync_path(new)
            check()
            if target.exists():
                os.replace(target, old)  # old does not exist: the claim removed any leftover
                try:
                    os.replace(new, target)
                except BaseException:
                    os.replace(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(new, target)
            fsync_path(target.parent)
        finally:
            _remove(new)
