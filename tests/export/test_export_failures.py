"""What ``monai-unet export`` refuses, and that it never leaves a half-written or overwritten package."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from export_helpers import export

pytest.importorskip("bioimageio.core", reason='the bioimageio extra: pip install "monai-unet[bioimageio]"')


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _overlay(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "overlay.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_transform_without_equivalent(checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A bundle whose preprocessing smooths the image: exit 2, the transform named, nothing written."""
    overlay = _overlay(
        tmp_path,
        {
            "preprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": True},
                    {"_target_": "GaussianSmoothd", "keys": "image", "sigma": 1.0},
                    {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                ],
            }
        },
    )
    out = tmp_path / "out" / "model.zip"
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out, "--config", overlay) == 2
    err = capsys.readouterr().err
    assert "GaussianSmoothd" in err and "no bioimage.io equivalent" in err
    assert not out.exists()


def test_resampling_bundle_needs_declared_spacing(checkpoints: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.zip"
    args = ("--set", "features=[4,8,16]", "bioimageio_declare_spacing=false")
    assert export("unet3d_volume", checkpoints["unet3d_volume"], out, *args) == 2
    err = capsys.readouterr().err
    assert "Orientationd" in err and "--declare-spacing" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_checkpoint_that_does_not_fit(checkpoints: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.zip"
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out, "--set", "features=[8,16,32,64,128]") == 2
    err = capsys.readouterr().err
    assert "does not fit the network of unet2d_membrane" in err and str(checkpoints["unet2d_membrane"]) in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_checkpoint_and_bad_output_name(tmp_path: Path, capsys) -> None:
    assert export("unet2d_membrane", tmp_path / "none.pt", tmp_path / "model.zip") == 2
    assert "none.pt not found" in capsys.readouterr().err
    (tmp_path / "w.pt").write_bytes(b"")
    assert export("unet2d_membrane", tmp_path / "w.pt", tmp_path / "model.bioimageio") == 2
    assert ".zip" in capsys.readouterr().err


def test_existing_output_is_kept_unless_overwrite(checkpoints: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.zip"
    out.write_bytes(b"an older package")
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an older package"
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out, "--overwrite", "--no-onnx") == 0
    with zipfile.ZipFile(out) as z:
        assert "rdf.yaml" in z.namelist() and "weights.onnx" not in z.namelist()
    assert _leftovers(tmp_path) == []  # the temporary was renamed into place
