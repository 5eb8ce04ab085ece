"""``monai-unet export --format bioimageio``: the package is valid, runs in bioimage.io's own library, and gives the
labels ``monai-unet predict`` gives."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from export_helpers import FEATURES, export

pytest.importorskip("bioimageio.core", reason='the bioimageio extra: pip install "monai-unet[bioimageio]"')

REPO = Path(__file__).resolve().parents[2]
PAPER_DOI = "10.1007/978-3-319-24574-4_28"


def rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _network(bundle: str):
    from monai_unet.bundles import inference_workflow

    return inference_workflow(bundle, overrides={"features": FEATURES[bundle]}).network_def


def test_package_describes_the_bundle(package_2d: Path) -> None:
    """Axes, valid sizes and the cropped border come from the network's size rules; the weights, operations,
    citations and files the issue lists are there."""
    d = rdf(package_2d)
    net = _network("unet2d_membrane")
    assert d["format_version"].startswith("0.5")
    (inp,), (out,) = d["inputs"], d["outputs"]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    for axis, rule in zip(inp["axes"][2:], reversed(net.axis_rules)):
        assert axis["size"] == {"min": rule.first, "step": rule.step}  # 188 + 16k for depth 4
    for axis, halo in zip(out["axes"][2:], reversed(net.halo)):
        assert axis["size"] == {"tensor_id": "image", "axis_id": axis["id"], "offset": -2 * halo} and "halo" not in axis
    assert [p["id"] for p in inp["preprocessing"]] == ["ensure_dtype", "scale_range", "ensure_dtype"]
    assert inp["preprocessing"][1]["kwargs"]["min_percentile"] == 0 and inp["pad"] == {"mode": "reflect"}
    assert [p["id"] for p in out["postprocessing"]] == ["softmax", "ensure_dtype"]
    assert out["axes"][1]["channel_names"] == ["background", "membrane"]
    assert set(d["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    arch = d["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("monai_unet.networks", "UNet")
    assert arch["kwargs"]["features"] == FEATURES["unet2d_membrane"] and arch["kwargs"]["padding"] == "valid"
    dois = [c.get("doi") for c in d["cite"]]
    assert PAPER_DOI in dois and "10.3389/fnana.2015.00142" in dois  # the paper and the ISBI 2012 data
    assert d["license"] == "Apache-2.0" and d["authors"] and d["covers"] and d["documentation"]
    with zipfile.ZipFile(package_2d) as z:
        names = set(z.namelist())
        doc = z.read(d["documentation"]["source"]).decode()
        cover = z.read(d["covers"][0]["source"])
    assert {"inference.json", "metadata.json", "export_bioimageio.json"} <= names  # the configs it came from
    assert "## Validation" in doc and "188 + 16k" in doc
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"


def test_bioimageio_test_passes_offline(package_2d: Path, offline: dict, tmp_path: Path) -> None:
    """``bioimageio test model.zip`` (every weights format, the test tensors, sizes min + n * step) passes with no
    network."""
    exe = Path(sys.executable).with_name("bioimageio")
    summary = tmp_path / "summary.json"
    cmd = [str(exe), "test", str(package_2d), "--summary", str(summary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=offline, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(summary.read_text())
    assert result["status"] == "passed"
    passed = {d["name"] for d in result["details"] if d["status"] == "passed"}
    for fmt in ("onnx", "pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in passed
        assert sum(n.startswith(f"Run {fmt} inference") for n in passed) == 6  # batch 1, 2 x size min + (0, 1, 2) step
    assert not [d["name"] for d in result["details"] if d["status"] == "failed"]


def test_halo_package_tiles_like_monai_unet_predict(
    package_2d_halo: Path, checkpoints: dict, shared_data: Path, offline: dict, tmp_path: Path
) -> None:
    """bioimageio.core's own tiled prediction of a real ISBI section (512 x 512, tiles of 316: 5 x 5 of them) with
    the halo package gives the labels ``monai-unet predict`` writes, pixel for pixel."""
    from bioimageio.core import Tensor, load_model_description, predict, test_model
    from PIL import Image

    from monai_unet.predict import predict as monai_unet_predict

    model = load_model_description(package_2d_halo)
    summary = test_model(model, weight_format="torchscript")  # all formats: test_bioimageio_test_passes_offline
    assert summary.status == "passed", summary.format()
    out = model.outputs[0]
    assert [a.halo for a in out.axes[2:]] == [102, 102]  # 92 + 10: tiles start on the pooling grid
    image_path = shared_data / "isbi2012" / "images" / "train_00.png"
    image = np.asarray(Image.open(image_path), dtype=np.float32)
    sample = Tensor.from_numpy(image[None, None], dims=("batch", "channel", "y", "x"))
    result = predict(model=model, inputs={"image": sample}, blocksize_parameter=6)  # tile 220 + 6 * 16
    prob = result.members["pred"].data.values[0]
    assert prob.shape == (2, 512, 512) and np.isfinite(prob).all()

    results = monai_unet_predict(
        "unet2d_membrane",
        [image_path],
        tmp_path / "pred",
        checkpoint=[checkpoints["unet2d_membrane"]],
        device="cpu",
        progress=False,
        overrides={"features": FEATURES["unet2d_membrane"]},
    )
    assert [r.status for r in results] == ["done"]
    want = np.asarray(Image.open(tmp_path / "pred" / "train_00_seg.png"))
    got = np.where(prob.argmax(0) == 1, 0, 255)  # membrane = class 1, written as 0 (ISBI 2012)
    agree = float((got == want).mean())
    print(f"label agreement with monai-unet predict: {agree:.6f} ({int((got != want).sum())} of {got.size} differ)")
    assert agree >= 0.9999
    assert 0.0 < float((want == 0).mean()) < 1.0  # both classes present: the comparison means something


def test_bundle_run_writes_the_same_package(package_2d: Path, checkpoints: dict, tmp_path: Path) -> None:
    """``python -m monai.bundle run export_bioimageio`` with the bundle's configs writes the package the command
    writes: the same files, byte for byte, but for TorchScript's random serialisation id."""
    out = tmp_path / "bundle.zip"
    bundle = REPO / "bundles" / "unet2d_membrane"
    features = str(FEATURES["unet2d_membrane"]).replace(" ", "")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "export_bioimageio"]
    cmd += ["--config_file", "['configs/inference.json','configs/export_bioimageio.json']"]
    cmd += ["--ckpt_path", str(checkpoints["unet2d_membrane"]), "--bioimageio_output", str(out), "--features", features]
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with zipfile.ZipFile(package_2d) as a, zipfile.ZipFile(out) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in a.namelist():
            if name in ("weights_torchscript.pt", "rdf.yaml"):
                continue
            assert hashlib.sha256(a.read(name)).digest() == hashlib.sha256(b.read(name)).digest(), name
    ra, rb = rdf(package_2d), rdf(out)
    ra["weights"]["torchscript"].pop("sha256")
    rb["weights"]["torchscript"].pop("sha256")
    assert ra == rb


def test_3d_package_declares_the_voxel_size(checkpoints: dict, export_dir: Path, offline: dict) -> None:
    """The 3D bundle resamples (Spacingd); its export config declares the target spacing on the z, y, x axes, and the
    package passes bioimage.io's tests."""
    from bioimageio.core import load_model_description, test_model

    out = export_dir / "unet3d.zip"
    assert export("unet3d_volume", checkpoints["unet3d_volume"], out) == 0
    d = rdf(out)
    axes = d["inputs"][0]["axes"][2:]
    assert [a["id"] for a in axes] == ["z", "y", "x"]
    assert [(a["scale"], a["unit"]) for a in axes] == [(3.0, "millimeter"), (2.0, "millimeter"), (2.0, "millimeter")]
    assert all(a["size"] == {"min": 44, "step": 4} for a in axes)
    with zipfile.ZipFile(out) as z:
        assert "Resample the image to the declared voxel size" in z.read("README.md").decode()
    summary = test_model(load_model_description(out), weight_format="torchscript")
    assert summary.status == "passed", summary.format()
