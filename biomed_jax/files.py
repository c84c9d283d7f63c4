"""Writing files safely: whole files and whole directories appear at once, or not at all.

Every output of ours goes through here: it is built under a temporary name beside its target,
given the usual permissions (0666 / 0777 less the umask, not `mkstemp`'s 0600), fsynced, renamed
onto the target, and the directory holding it fsynced. A failure removes the temporary; a killed
process leaves a temporary directory named after its pid, which the next `replace_dir` of the same
target removes. The bottom of the house: imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, the file written there gets the
    usual permissions, is fsynced and renamed onto `path`. On failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Temporary directories of earlier `replace_dir(target)` calls whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:new|old)-(\d+)-\w+")
    for entry in target.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if found and entry.is_dir() and not _pid_alive(int(found.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def replace_dir(target: str | Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; if the block succeeds, it replaces
    `target` whole (files fsynced, usual permissions). An existing `target` must be empty or
    `replaceable(target)`, else FileExistsError (checked before and after the block)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)

    def check() -> None:
        if target.is_dir() and any(target.iterdir()) and not replaceable(target):
            raise FileExistsError(
                f"{target} is not empty and not an earlier output of this command: refusing to "
                "write into it (choose a new or empty directory, or remove it)"
            )
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")

    check()
    new = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-{os.getpid()}-", dir=target.parent))
    try:
        yield new
        os.chmod(new, 0o777 & ~umask())
        for file in new.rglob("*"):
            fsync_path(file)
        fsync_path(new)
        check()
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent)
            )
            os.replace(target, old)  # old is an empty directory: rename replaces it
            os.replace(new, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)
