"""scripts/bench_finish.py on a small label map: the stages after the network are timed and the copy is faithful."""

from __future__ import annotations

import sys
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_finish  # noqa: E402


def test_finish_times_the_pyramid_and_the_ome_tiff(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_finish", "--size", "1100", "--block", "512", "--workdir", str(tmp_path)])
    assert bench_finish.main() == 0
    out = capsys.readouterr().out
    assert "9 blocks of 512^2" in out and "equals the store's: True" in out
    with tifffile.TiffFile(tmp_path / "x.ome.tif") as tif:
        series = tif.series[0]
        assert series.shape == (1100, 1100) and len(series.levels) >= 2
