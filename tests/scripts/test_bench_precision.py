"""scripts/bench_precision.py end to end on tiny networks: ISBI crops in 2D (with int8), a DICOM study in 3D."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_precision  # noqa: E402
import eval_brain_dicom  # noqa: E402

from monai_unet.bundles import inference_workflow  # noqa: E402
from monai_unet.inferers.precision import cpu_computes_bf16, device_family, resolve_precision  # noqa: E402
from monai_unet.networks import UNet  # noqa: E402

CPU = "$torch.device('cpu')"
FAST = ["--device", "cpu", "--warmup", "0", "--repeats", "1", "--rounds", "1", "--threads", "1"]


def random_weights(bundle: str, path: Path, overrides: dict, overlays: list[str] = ()) -> Path:
    """A random network built by the bundle's own config, saved as a checkpoint."""
    torch.manual_seed(0)
    net = inference_workflow(bundle, "inference", {"device": CPU, **overrides}, overlays).network_def
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def isbi_crops(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sections 00, 01 (calibration) and 16, 17 (scored) of ISBI 2012, cropped to 96 x 80 (not square, so a
    transposed output would not fit its label)."""
    root = tmp_path_factory.mktemp("isbi")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
        for i in (0, 1, 16, 17):
            image = np.asarray(Image.open(shared_data / "isbi2012" / sub / f"train_{i:02d}.png"))
            Image.fromarray(image[100:196, 200:280]).save(root / sub / f"train_{i:02d}.png")
    return root


def test_bench_2d_with_int8_reports_speed_agreement_and_metrics(isbi_crops: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    settings = {"features": [4, 8, 16], "infer_tile_size": [84, 84]}
    weights = random_weights("unet2d_membrane", tmp_path / "w.pt", settings)
    check = tmp_path / "overlay.json"
    check.write_text(json.dumps({"keep": 1, "precision_check": [{"device_family": "cpu elsewhere"}]}))
    out = tmp_path / "out"
    args = ["--checkpoint", str(weights), "--set", *(f"{k}={json.dumps(v)}" for k, v in settings.items())]
    args += ["--data", str(isbi_crops), "--sections", "16", "17", "--calibration-sections", "0", "1"]
    assert bench_precision.main([*args, *FAST, "--int8", "--out-dir", str(out), "--write-check", str(check)]) == 0
    printed = capsys.readouterr().out

    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["fp32", "bf16", "fp16", "int8"]
    assert result["cpu"] in printed and "| precision | output Mpx/s |" in printed
    for name, row in rows.items():
        assert row["output_pixels"] == 2 * 96 * 80  # the output grid, as B1 counts it
        assert row["mpx_per_s"] == pytest.approx(row["output_pixels"] / 1e6 / row["seconds"])
        assert row["speedup"] == pytest.approx(rows["fp32"]["seconds"] / row["seconds"])
        assert 0.0 <= row["labels_changed"] <= 1.0 and set(row["metrics"]) == {"pixel_error", "rand_error", "dice"}
        assert row["metrics"]["pixel_error"] == pytest.approx(np.mean([s["pixel_error"] for s in row["per_input"]]))
        assert row["goal"] == "reference" if name == "fp32" else row["goal"].startswith(("met", "not met"))
    # fp32 run twice labels the same pixels: the comparison itself adds nothing
    assert rows["fp32"]["labels_changed"] == 0 and rows["fp32"]["metric_change"] == 0
    # the pixel error is what the written label files say
    for k, section in enumerate(("16", "17")):
        pred = np.asarray(Image.open(next((out / "pred" / "fp32" / f"{k:03d}").glob("*.png"))))
        label = np.asarray(Image.open(isbi_crops / "labels" / f"train_{section}.png"))
        assert rows["fp32"]["per_input"][k]["pixel_error"] == pytest.approx(np.mean((pred < 128) != (label < 128)))
    assert result["int8"]["calibration_tiles"] >= 2 and Path(result["int8"]["onnx"]).is_file()
    assert "`--precision bf16`" in result["recommendation"] and "pixels in 10,000" in result["recommendation"]
    assert result["recommendation"] in printed

    # the check is merged into the overlay: other keys and other families' entries are kept
    written = json.loads(check.read_text())
    assert written["keep"] == 1
    families = [e["device_family"] for e in written["precision_check"]]
    assert families == ["cpu elsewhere", device_family("cpu")]
    entry = written["precision_check"][1]
    assert set(entry["precisions"]) == {"bf16", "fp16", "int8"}
    assert entry["precisions"]["bf16"]["passed"] == rows["bf16"]["passed"]
    picked, why = resolve_precision("auto", "cpu", written["precision_check"])
    if cpu_computes_bf16():
        # a tiny random network on these crops is far from the goal (speed, or labels near the decision boundary)
        assert picked == ("bf16" if rows["bf16"]["passed"] else "fp32") and "precision check" in why
    else:  # auto never takes bf16 on a CPU that only emulates it, whatever the check says
        assert picked == "fp32" and "no native bfloat16" in why


def test_bench_3d_scores_tumour_dice_on_the_study_grid(shared_data: Path, tmp_path: Path) -> None:
    studies = eval_brain_dicom.find_studies([shared_data / "brain_tumor_progression_dicom"])
    plan = json.loads((REPO / "bundles" / "unet3d_volume" / "configs" / "brain_tumor_progression.json").read_text())
    plan["features"] = [2, 4, 8, 16]
    net = UNet(3, 2, 2, features=plan["features"], kernel_size=plan["kernel_size"], strides=plan["strides"])
    plan["infer_tile_size"] = [r.first + 16 * r.step if r.step > 1 else 40 for r in net.axis_rules]
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps(eval_brain_dicom.overlay_for(plan, {"T1post": "*T1post*", "FLAIR": "*FLAIR*"}, {})))
    weights = random_weights("unet3d_volume", tmp_path / "w.pt", {}, [str(overlay)])
    out = tmp_path / "out"
    args = ["--bundle", "unet3d_volume", "--checkpoint", str(weights), "--config", str(overlay)]
    args += ["--inputs", str(studies[0]), "--precisions", "bf16", "--out-dir", str(out)]
    assert bench_precision.main([*args, *FAST]) == 0
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["fp32", "bf16"] and rows["fp32"]["labels_changed"] == 0
    mask = eval_brain_dicom.load_ras(next(studies[0].glob(eval_brain_dicom.LABEL_SERIES)))
    pred = eval_brain_dicom.load_ras(next((out / "pred" / "fp32" / "000").rglob("*.nii.gz")))
    assert pred.shape == mask.shape  # scored on the study's own grid
    assert rows["fp32"]["metrics"]["dice"] == pytest.approx(eval_brain_dicom.dice(pred > 0, mask > 0))
    for row in rows.values():
        assert set(row["metrics"]) == {"dice"} and 0.0 <= row["metrics"]["dice"] <= 1.0 and row["mpx_per_s"] > 0
    assert "voxels in 10,000" in result["recommendation"] and "Dice" in result["recommendation"]


def test_goal_verdicts_and_counts_in_10000() -> None:
    def row(seconds: float, changed: float, pixel: float) -> dict:
        return {"seconds": seconds, "labels_changed": changed, "metrics": {"pixel_error": pixel, "rand_error": 0.1}}

    rows = {"fp32": row(2.0, 0.0, 0.07), "bf16": row(1.0, 5e-4, 0.0702), "fp16": row(1.5, 5e-4, 0.07)}
    rows["int8"] = row(0.5, 2e-3, 0.0712)
    bench_precision.judge(rows, 2)
    assert rows["fp32"]["goal"] == "reference" and not rows["fp32"]["passed"]
    assert rows["bf16"]["goal"] == "met" and rows["bf16"]["passed"] and rows["bf16"]["speedup"] == 2.0
    assert rows["fp16"]["goal"] == "not met: 1.33x < 1.8x"
    assert "20 in 10,000 labels changed" in rows["int8"]["goal"] and "0.0012" in rows["int8"]["goal"]
    assert [bench_precision.per_10k(s) for s in (3.1e-5, 2.7e-4, 2.7e-3, 0.027)] == ["0.31", "2.7", "27", "270"]
    sentence = bench_precision.recommendation(rows, 2, torch.device("cpu"))
    assert "segments 2.00 times faster than fp32 and changes 5.0 pixels in 10,000" in sentence
    assert "pixel error and Rand error unchanged to the third decimal" in sentence


def test_timed_inferer_warms_up_times_and_forwards_settings() -> None:
    from monai_unet.inferers import OverlapTileInferer

    seen = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    timed = bench_precision.TimedInferer(OverlapTileInferer(tile_size=16, halo=0, tta=True), torch.device("cpu"))
    timed.warmup, timed.repeats = 2, 3
    timed(torch.zeros(1, 1, 16, 24), network)
    assert timed.tta is True and timed.tile_size == 16  # what BundleRunner.run reads from its inferer
    assert len(timed.calls) == 1 and len(timed.calls[0]["seconds"]) == 3 and timed.calls[0]["pixels"] == 16 * 24
    assert len(seen) == (2 + 3) * 2 * 4  # every call: 2 tiles, 4 flips
