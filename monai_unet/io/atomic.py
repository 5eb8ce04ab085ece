"""Atomic outputs: write to a hidden temporary path beside the final one, then rename it into place.

A process killed at any moment leaves either the complete output or nothing under the output's name; only a
hidden temporary (``.<name>.<host>.<pid>.tmp<suffix>``) may remain, and :func:`clean_stale_temporaries` removes
those whose process is gone when a batch starts again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_output",
    "claim",
    "clean_stale_temporaries",
    "is_temporary",
    "lock_path",
    "output_suffix",
    "scratch_path",
]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.tmp(?P<suffix>(\.[A-Za-z0-9]+)*)$")


def output_suffix(path: str | os.PathLike) -> str:
    """The format suffix of an output path: ``.nii.gz``, ``.ome.tif``, ``.zarr``, ``.png``..."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".ome.tif", ".ome.tiff"):
        if name.endswith(double):
            return Path(path).name[-len(double) :]
    return Path(path).suffix


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary made by :func:`atomic_output`."""
    return _TMP.match(Path(path).name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) to write; rename it to ``path`` when the block ends.

    The temporary is a hidden sibling, so the rename never crosses file systems. Files are flushed to disk
    before the rename. On an exception (or ``KeyboardInterrupt``) the temporary is removed and nothing is left
    under ``path``. Works for files and for folders (zarr stores); an existing ``path`` is replaced.

    Example:
        ``with atomic_output(out / "a_seg.nii.gz") as tmp: nib.save(img, tmp)``
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = output_suffix(path)
    tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.tmp{suffix}"
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary {tmp} for {path}.")
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def scratch_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path named like :func:`atomic_output`'s (so stale ones are cleaned) and remove
    whatever was written there when the block ends: scratch space beside the outputs (e.g. a zarr store)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.tmp{output_suffix(path)}"
    _remove(tmp)
    try:
        yield tmp
    finally:
        _remove(tmp)


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries under ``folder`` left by killed processes of this host; return what was removed.

    Temporaries of live processes (other shards writing to the same folder) and of other hosts are kept.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            m = _TMP.match(name)
            if m is None or m.group("host") != _HOST or _pid_alive(int(m.group("pid"))):
                continue
            p = Path(root) / name
            _remove(p)
            removed.append(p)
        dirs[:] = [d for d in dirs if not _TMP.match(d)]
    return removed


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file that claims the work producing ``path``: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _try_lock(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{_HOST} {os.getpid()}\n")
    return True


def _holder(lock: Path) -> tuple[str, int] | None:
    """``(host, pid)`` written in ``lock``; ``None`` when it is gone; pid 0 while it is being written."""
    try:
        parts = lock.read_text().split()
    except FileNotFoundError:
        return None
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return "", 0


@contextlib.contextmanager
def claim(path: str | os.PathLike) -> Iterator[str | None]:
    """Claim the work that produces ``path`` for this process, so that concurrent runs never do it twice.

    Yields ``None`` when this process holds the claim (a lock file beside ``path``, removed when the block ends),
    or a description of the process that holds it (``"process 1234 on host"``). The lock of a process of this
    host that is gone (killed) is taken over; locks of other hosts are respected.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = _try_lock(lock)
    if not held:
        owner = _holder(lock)
        if owner is None or (owner[0] == _HOST and owner[1] > 0 and not _pid_alive(owner[1])):
            lock.unlink(missing_ok=True)  # stale: its process is gone
            held = _try_lock(lock)
    if not held:
        owner = _holder(lock) or ("", 0)
        yield f"process {owner[1]} on {owner[0]}" if owner[1] else "another process"
        return
    try:
        yield None
    finally:
        if _holder(lock) == (_HOST, os.getpid()):
            lock.unlink(missing_ok=True)
