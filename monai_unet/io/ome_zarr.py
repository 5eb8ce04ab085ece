"""A 2D label map written block by block into an OME-Zarr store (NGFF 0.4), resumable and writable in parallel.

Layout (NGFF 0.4 on zarr v2, which napari (napari-ome-zarr), Fiji (n5-zarr, MoBIE) and QuPath read)::

    X_seg.ome.zarr/
        .zattrs                    multiscales of the label map (so image viewers open it), paths into labels/
        labels/.zattrs             {"labels": ["segmentation"]}
        labels/segmentation/       the label image: multiscales + "image-label" (colours, source)
            0/ 1/ 2/ ...           the pyramid, level k downsampled 2**k (nearest: label values stay labels)

Every chunk of level 0 is one output block of the prediction, so blocks never share a chunk: processes (Dask
workers) write blocks in parallel without locking. A block's completion marker (``.monai_unet/done/<i>.<j>``) is
written after its chunk, so a killed run leaves blocks either marked and complete or redone by the next run; the
job description (``.monai_unet/job.json``: input, network, block shape) tells a resumed run whether the partial store
is its own. Chunks are zlib-compressed, the TIFF Deflate encoding, so :mod:`monai_unet.io.ome_tiff` copies their
bytes into an OME-TIFF without decoding them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_unet.io.large_image import PixelSize

__all__ = ["LABEL_NAME", "LabelStore", "pyramid_shapes"]

LABEL_NAME = "segmentation"
NGFF_VERSION = "0.4"
ZLIB_LEVEL = 6
_STATE = ".monai_unet"


def pyramid_shapes(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[int, int]]:
    """Level shapes, halving (rounded up) until a level fits in one chunk."""
    shapes = [(int(shape[0]), int(shape[1]))]
    while any(s > c for s, c in zip(shapes[-1], chunks)):
        shapes.append(tuple(max(1, math.ceil(s / 2)) for s in shapes[-1]))  # type: ignore[arg-type]
    return shapes


def _zarr() -> Any:
    from monai.utils import optional_import

    zarr, ok = optional_import("zarr")
    if not ok:
        raise ImportError(
            'writing OME-Zarr and OME-TIFF outputs block by block needs zarr: pip install "monai-unet[large]".'
        )
    return zarr


class LabelStore:
    """The OME-Zarr label store under ``root`` (see the module docstring).

    Use :meth:`create` or :meth:`resume`; :meth:`write_block` writes a block and its marker; when all blocks are
    done, :meth:`build_pyramid` and :meth:`write_metadata` complete it and :meth:`finish` removes the job state.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.level_dir = self.root / "labels" / LABEL_NAME
        self.state = self.root / _STATE
        zarr = _zarr()
        self.array = zarr.open_array(str(self.level_dir / "0"), mode="r+")
        self.shape = tuple(int(s) for s in self.array.shape)
        self.chunks = tuple(int(c) for c in self.array.chunks)
        self.dtype = np.dtype(self.array.dtype)

    # ---- creation and resumption -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, root: str | os.PathLike, shape: Sequence[int], chunks: Sequence[int], dtype: Any, job: dict
    ) -> LabelStore:
        """A new, empty store (anything at ``root`` is removed first) for ``job`` (a JSON-able description)."""
        import numcodecs

        zarr = _zarr()
        root = Path(root)
        if root.exists():
            shutil.rmtree(root)
        group = zarr.open_group(str(root), mode="w", zarr_format=2)
        labels = group.create_group("labels")
        image = labels.create_group(LABEL_NAME)
        image.create_array(
            "0",
            shape=tuple(int(s) for s in shape),
            chunks=tuple(int(c) for c in chunks),
            dtype=np.dtype(dtype),
            compressors=numcodecs.Zlib(level=ZLIB_LEVEL),
            chunk_key_encoding={"name": "v2", "separator": "/"},
            fill_value=0,
        )
        (root / _STATE / "done").mkdir(parents=True)
        (root / _STATE / "job.json").write_text(json.dumps(job, indent=1, sort_keys=True))
        return cls(root)

    @classmethod
    def resume(cls, root: str | os.PathLike, job: dict) -> LabelStore | None:
        """The partial store at ``root`` when it was made for the same ``job`` (its keys other than ``"chunks"``
        equal), else ``None``."""
        root = Path(root)
        try:
            saved = json.loads((root / _STATE / "job.json").read_text())
            store = cls(root)
        except Exception:  # absent, or cut short before its description was written
            return None
        same = {k: v for k, v in saved.items() if k != "chunks"} == {k: v for k, v in job.items() if k != "chunks"}
        return store if same else None

    @property
    def grid(self) -> tuple[int, int]:
        """Blocks (chunks of level 0) per axis."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks))  # type: ignore[return-value]

    def block_box(self, i: int, j: int) -> tuple[slice, slice]:
        """Rows and columns of block ``(i, j)``."""
        (h, w), (ch, cw) = self.shape, self.chunks
        return slice(i * ch, min(h, (i + 1) * ch)), slice(j * cw, min(w, (j + 1) * cw))

    # ---- blocks ----------------------------------------------------------------------------------------------

    def _marker(self, i: int, j: int) -> Path:
        return self.state / "done" / f"{i}.{j}"

    def done_blocks(self) -> set[tuple[int, int]]:
        """The blocks whose chunk is written completely (their marker exists)."""
        done = set()
        for name in os.listdir(self.state / "done"):
            a, _, b = name.partition(".")
            if a.isdigit() and b.isdigit():
                done.add((int(a), int(b)))
        return done

    def write_block(self, i: int, j: int, data: np.ndarray) -> None:
        """Write block ``(i, j)`` (``(rows, columns)`` of :meth:`block_box`'s size), then its completion marker."""
        rows, cols = self.block_box(i, j)
        self.array[rows, cols] = np.asarray(data, dtype=self.dtype)
        self._marker(i, j).touch()

    # ---- completion ------------------------------------------------------------------------------------------

    def level(self, k: int) -> Any:
        return _zarr().open_array(str(self.level_dir / str(k)), mode="r+")

    def create_levels(self) -> list[tuple[int, int]]:
        """Create the empty arrays of levels 1.. (idempotent); returns all level shapes."""
        import numcodecs

        zarr = _zarr()
        image = zarr.open_group(str(self.level_dir), mode="r+")
        shapes = pyramid_shapes(self.shape, self.chunks)
        for k, shape in enumerate(shapes[1:], start=1):
            if str(k) not in image:
                image.create_array(
                    str(k),
                    shape=shape,
                    chunks=self.chunks,
                    dtype=self.dtype,
                    compressors=numcodecs.Zlib(level=ZLIB_LEVEL),
                    chunk_key_encoding={"name": "v2", "separator": "/"},
                    fill_value=0,
                )
        return shapes

    def downsample_rows(self, k: int, rows: range | None = None) -> None:
        """Write chunk rows ``rows`` (default all) of level ``k >= 1`` from level ``k - 1`` (every second pixel)."""
        src, dst = self.level(k - 1), self.level(k)
        ch, cw = self.chunks
        h, w = dst.shape
        for i in rows if rows is not None else range(math.ceil(h / ch)):
            r0, r1 = i * ch, min(h, (i + 1) * ch)
            for c0 in range(0, w, cw):
                c1 = min(w, c0 + cw)
                block = np.asarray(src[2 * r0 : min(src.shape[0], 2 * r1), 2 * c0 : min(src.shape[1], 2 * c1)])
                dst[r0:r1, c0:c1] = block[::2, ::2]

    def build_pyramid(self) -> list[tuple[int, int]]:
        """Levels 1.. from level 0, one after the other; returns all level shapes."""
        shapes = self.create_levels()
        for k in range(1, len(shapes)):
            self.downsample_rows(k)
        return shapes

    def write_metadata(self, pixel_size: PixelSize | None, n_classes: int | None = None, source: str = "") -> None:
        """NGFF 0.4 metadata: the label image's multiscales and ``image-label``, the ``labels`` group, and the root's
        multiscales (the same arrays) for viewers that open images only."""
        zarr = _zarr()
        shapes = pyramid_shapes(self.shape, self.chunks)
        size = pixel_size or PixelSize(1.0, 1.0, "")
        axes = [{"name": a, "type": "space", **({"unit": size.unit} if size.unit else {})} for a in "yx"]

        def multiscales(prefix: str) -> list[dict]:
            datasets = [
                {
                    "path": f"{prefix}{k}",
                    "coordinateTransformations": [{"type": "scale", "scale": [size.y * 2**k, size.x * 2**k]}],
                }
                for k in range(len(shapes))
            ]
            meta = {"method": "numpy slicing [::2, ::2] (nearest)", "source": source} if source else None
            return [
                {
                    "version": NGFF_VERSION,
                    "name": LABEL_NAME,
                    "axes": axes,
                    "datasets": datasets,
                    "type": "nearest",
                    **({"metadata": meta} if meta else {}),
                }
            ]

        palette = [[0, 0, 0, 0], [255, 64, 64, 255], [64, 160, 255, 255], [64, 220, 64, 255], [255, 200, 0, 255]]
        colors = [{"label-value": v, "rgba": palette[v % len(palette)]} for v in range(max(2, n_classes or 2))]
        label = zarr.open_group(str(self.level_dir), mode="r+")
        label.attrs.update(
            {
                "multiscales": multiscales(""),
                "image-label": {"version": NGFF_VERSION, "colors": colors, "source": {"image": "../../"}},
            }
        )
        zarr.open_group(str(self.root / "labels"), mode="r+").attrs.update({"labels": [LABEL_NAME]})
        zarr.open_group(str(self.root), mode="r+").attrs.update({"multiscales": multiscales(f"labels/{LABEL_NAME}/")})

    def finish(self) -> None:
        """Remove the job state (markers, job description): the store is then a plain OME-Zarr image."""
        shutil.rmtree(self.state, ignore_errors=True)

    # ---- encoded chunks, for the OME-TIFF ----------------------------------------------------------------------

    def encoded_chunks(self, k: int) -> Any:
        """The zlib-encoded chunks of level ``k`` in row-major order (TIFF Deflate tiles, full chunk size);
        chunks never written (all fill value) are encoded here."""
        folder = self.level_dir / str(k)
        h, w = (int(s) for s in self.level(k).shape)
        ch, cw = self.chunks
        empty = None
        for i in range(math.ceil(h / ch)):
            for j in range(math.ceil(w / cw)):
                f = folder / str(i) / str(j)
                if f.is_file():
                    yield f.read_bytes()
                else:
                    if empty is None:
                        empty = zlib.compress(np.zeros(self.chunks, self.dtype).tobytes(), ZLIB_LEVEL)
                    yield empty
