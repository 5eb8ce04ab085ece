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

__all__ = ["atomic_output", "clean_stale_temporaries", "is_temporary", "output_suffix", "scratch_path"]

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
