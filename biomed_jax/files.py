"""Writing files safely: whole files and whole directories appear at once, or not at all.

Every output of ours goes through here: it is built under a temporary name beside its target,
given the usual permissions (0666 / 0777 less the umask, not `mkstemp`'s 0600), fsynced, renamed
onto the target, and the directory holding it fsynced. A failure removes the temporary. A killed
process leaves its temporary behind, named after its writer (`.<name>.<host>-<pid>-*.tmp`, or
`.<name>.new-<host>-<pid>-*` for a directory); the first file a process writes into that
directory, and every `replace_dir` there, removes the temporaries of this host's processes that
are gone. The bottom of the house: imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


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


def _writer() -> str:
    """What a temporary's name says of the process writing it: this host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporaries in `directory` of this host's processes that are gone (killed while
    writing); another host's, or a live process's, are left alone."""
    host = re.escape(socket.gethostname())
    pattern = re.compile(rf"\..+\.(?:new-|old-)?{host}-(\d+)-\w+(?:\.tmp)?")
    with os.scandir(directory) as entries:
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None or _pid_alive(int(found.group(1))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


_SWEPT: set[tuple[Path, int]] = set()  # (directory, pid) that atomic_path has swept


def _sweep_once(directory: Path) -> None:
    """Sweep `directory` on this process's first file written there: a writer of many files into a
    large directory (shards and their manifest) lists it once, not once per file."""
    key = (directory.resolve(), os.getpid())
    if key not in _SWEPT:
        _remove_stale_temporaries(directory)
        _SWEPT.add(key)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, the file written there gets the
    usual permissions, is fsynced and renamed onto `path`. On failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def replace_dir(target: str | Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; if the block succeeds, it replaces
    `target` whole (files fsynced, usual permissions). An existing `target` must be empty or
    `replaceable(target)`, else FileExistsError (checked before and after the block)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target.parent)

    def check() -> None:
        if target.is_dir() and any(target.iterdir()) and not replaceable(target):
            raise FileExistsError(
                f"{target} is not empty and not an earlier output of this command: refusing to "
                "write into it (choose a new or empty directory, or remove it)"
            )
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")

    check()
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-{_writer()}-", dir=target.parent))
    try:
        yield new
        os.chmod(new, 0o777 & ~umask())
        for file in new.rglob("*"):
            fsync_path(file)
        fsync_path(new)
        check()
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.old-{_writer()}-", dir=target.parent)
            )
            os.replace(target, old)  # old is an empty directory: rename replaces it
            os.replace(new, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)
