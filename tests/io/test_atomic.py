"""Atomic outputs: complete file or nothing; temporaries of dead processes cleaned, of live ones kept."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from monai_unet.io.atomic import atomic_output, clean_stale_temporaries, is_temporary, output_suffix, scratch_path
from monai_unet.io.writers import write_ome_tiff_from_array, write_tiff


def test_atomic_output_renames_only_when_complete(tmp_path):
    final = tmp_path / "a_seg.nii.gz"
    with atomic_output(final) as tmp:
        assert is_temporary(tmp) and tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"complete")
    assert final.read_bytes() == b"complete"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed while writing")
    assert final.read_bytes() == b"complete"  # the old output stays, the half-written one is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_seg.nii.gz"]


def test_atomic_output_of_a_folder_and_scratch(tmp_path):
    final = tmp_path / "big_seg.zarr"
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "chunk").write_bytes(b"1")
    assert (final / "chunk").read_bytes() == b"1"
    with scratch_path(tmp_path / "work.zarr") as tmp:
        tmp.mkdir()
        assert is_temporary(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_seg.zarr"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    code = (
        "import os, sys; from monai_unet.io.atomic import atomic_output\n"
        "cm = atomic_output(sys.argv[1]); tmp = cm.__enter__(); tmp.write_bytes(b'x'); print(tmp, flush=True)\n"
        "os._exit(0)  # die like a killed process: no cleanup\n"
    )
    dead = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x_seg.png")], capture_output=True, text=True)
    stale = tmp_path / dead.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    assert stale.exists() and is_temporary(stale)  # the process died inside the block: its temporary is left
    live = tmp_path / f".y_seg.png.{stale.name.split('.')[-4]}.{os.getpid()}.tmp.png"
    live.write_bytes(b"y")
    assert is_temporary(live)
    assert clean_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_output_suffix():
    assert output_suffix("a/b_seg.nii.gz") == ".nii.gz"
    assert output_suffix("b_seg.ome.tif") == ".ome.tif"
    assert output_suffix("b_seg.zarr") == ".zarr"


def test_tiff_writers_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (700, 530), dtype=np.uint8)
    write_ome_tiff_from_array(a, tmp_path / "a.ome.tif", tile=(256, 256))
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tf:
        assert tf.is_ome and tf.pages[0].is_tiled
        np.testing.assert_array_equal(tf.asarray(), a)
    write_tiff(np.stack([a, a + 1]), tmp_path / "s.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif")[1], a + 1)
