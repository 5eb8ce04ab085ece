"""The accuracy scripts (B5, B6, 3D DICOM) run end to end on the real data, with a few iterations."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import ablation_skips  # noqa: E402
import eval_brain_dicom  # noqa: E402
import eval_isbi  # noqa: E402

TINY = ["max_epochs=1", "epoch_length=2", "val_interval=5", "num_workers=0", "tile_size=[252,252]"]


def test_isbi2012_config_trains_on_00_15_and_holds_out_16_19(shared_data: Path, tmp_path: Path) -> None:
    cfg = REPO / "bundles" / "unet2d_membrane" / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "isbi2012.json")])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(shared_data / "isbi2012")})
    names = {k: [Path(d["image"]).name for d in parser.get_parsed_content(f"{k}_datalist")] for k in ("train", "val")}
    assert names["train"] == [f"train_{i:02d}.png" for i in range(16)]
    assert names["val"] == [f"train_{i:02d}.png" for i in (16, 17, 18, 19)]
    net = parser.get_parsed_content("network_def")
    assert net.is_valid_size(parser.get("tile_size"))
    # one inference tile covers a whole 512 x 512 section
    assert min(net.output_size(parser.get("infer_tile_size"))) >= 512


def test_eval_isbi_and_skip_ablation(shared_data: Path, tmp_path: Path) -> None:
    data, docs = shared_data / "isbi2012", tmp_path / "docs"
    skips, no_skips = tmp_path / "skips", tmp_path / "no_skips"
    eval_isbi.main(["--data", str(data), "--out-dir", str(skips), "--thresholds", "0.4", "0.5", "--set", *TINY])
    result = json.loads((skips / "results.json").read_text())
    assert result["iterations"] == 2 and result["skip_connections"] and result["tta"]
    assert sorted(result["per_section"]) == ["16", "17", "18", "19"]
    for key in ("pixel_error", "rand_error", "rand_error_grown", "dice"):  # the mean is over the four sections
        assert result["mean"][key] == pytest.approx(np.mean([v[key] for v in result["per_section"].values()]))
    # thresholds chosen on the training sections, one per metric, from the grid given; scored on 16-19
    chosen = result["thresholds_from_training_sections"]
    assert sorted(chosen) == ["pixel_error", "rand_error", "rand_error_grown"]
    assert set(chosen.values()) <= {0.4, 0.5}
    for key, t in chosen.items():
        if t == 0.5:
            assert result["mean_at_training_thresholds"][key] == pytest.approx(result["mean"][key])
    probs = np.load(skips / "probabilities.npy")
    assert probs.shape == (4, 512, 512)
    for k, section in enumerate(("16", "17", "18", "19")):  # the saved probabilities are the ones scored
        label = np.asarray(Image.open(data / "labels" / f"train_{section}.png")) < 128  # 0 = membrane
        pixel_error = float(np.mean((probs[k] > 0.5) != label))
        # saved as float16: a few pixels next to 0.5 may round across it
        assert pixel_error == pytest.approx(result["per_section"][section]["pixel_error"], abs=1e-3)

    # the ablation reuses the run above and trains only the variant without skips
    before = (skips / "results.json").stat().st_mtime_ns
    args = ["--data", str(data), "--skips-dir", str(skips), "--no-skips-dir", str(no_skips), "--docs", str(docs)]
    ablation_skips.main([*args, "--set", *TINY])
    assert (skips / "results.json").stat().st_mtime_ns == before
    # ... because its recorded recipe is today's; another recipe or the other variant's run is not reused
    same = argparse.Namespace(seed=0, set=TINY)
    assert ablation_skips.stale(skips, True, same) is None and ablation_skips.stale(no_skips, False, same) is None
    changed = argparse.Namespace(seed=0, set=[*TINY, "border_sigma=4.0"])
    assert "differs" in ablation_skips.stale(skips, True, changed)
    assert "differs" in ablation_skips.stale(no_skips, True, same)
    assert ablation_skips.stale(tmp_path / "nothing", True, same) == "no results yet"
    # a run of another recipe is not replaced without --retrain: the script stops and says so
    with pytest.raises(SystemExit, match=r"recipe differs.*--retrain"):
        ablation_skips.main([*args, "--set", *TINY, "border_sigma=4.0"])
    assert (skips / "results.json").stat().st_mtime_ns == before
    assert not json.loads((no_skips / "results.json").read_text())["skip_connections"]
    with_w = torch.load(skips / "models" / "model_final.pt", weights_only=True)
    without_w = torch.load(no_skips / "models" / "model_final.pt", weights_only=True)
    assert sum(v.numel() for v in without_w.values()) < sum(v.numel() for v in with_w.values())
    table = (docs / "ablation_skips.md").read_text()
    assert "U-Net (skip connections)" in table and "without skip connections" in table and "0.0382" in table
    png = Image.open(docs / "ablation_skips.png")
    assert png.width > 4 * ablation_skips.PANEL and png.height > 2 * ablation_skips.PANEL
    assert not list(docs.glob(".*.tmp*"))


def test_junction_pick_finds_the_junction_where_maps_differ() -> None:
    labels = np.zeros((2, 200, 200), bool)
    labels[:, 100, :] = True  # a horizontal membrane ...
    labels[:, :100, 60] = True  # ... met by one from above at column 60 (a junction) ...
    labels[:, 100:, 150] = True  # ... and one from below at column 150
    a = np.zeros(labels.shape, np.float32)
    b = a.copy()
    b[1, 90:110, 140:160] = 1.0  # the two maps differ around the second junction of section 1
    s, r, c = ablation_skips.pick_junction(labels, a, b)
    assert s == 1 and abs(r - 100) <= 2 and abs(c - 150) <= 2


def test_eval_brain_dicom_cross_validates_by_patient(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leave-one-patient-out on the four studies with two sequences, a tiny network and a few seconds per model:
    every held-out study is scored on its own grid, the post-processing is chosen on the folds, the final model
    is trained on all studies and its overlay says how to use it."""
    from monai_unet.networks import UNet

    data = shared_data / "brain_tumor_progression_dicom"
    plan = json.loads((REPO / "bundles" / "unet3d_volume" / "configs" / "brain_tumor_progression.json").read_text())
    plan["features"] = [2, 4, 8, 16]
    net = UNet(3, 2, 2, features=plan["features"], kernel_size=plan["kernel_size"], strides=plan["strides"])
    plan["tile_size"] = [r.first + r.step for r in net.axis_rules]
    plan["infer_tile_size"] = [r.first + 16 * r.step if r.step > 1 else 40 for r in net.axis_rules]
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "cv"
    tiny = ["epoch_length=2", "max_epochs=1", "num_workers=0"]
    args = ["--data", str(data), "--plan", str(plan_path), "--out-dir", str(out), "--channel-sets", "T1post,FLAIR"]
    eval_brain_dicom.main([*args, "--budget-min", "0.05", "--set", *tiny])
    result = json.loads((out / "results.json").read_text())["sets"]["T1post+FLAIR"]
    assert len(result["folds"]) == 2
    for fold in result["folds"]:  # each fold holds out one patient's two studies and trains on the other's
        held = {Path(s).parent.name for s in fold["studies"]}
        trained = {Path(s).parent.name for s in fold["train"]}
        assert len(fold["studies"]) == 2 and len(held) == 1 and held.isdisjoint(trained)
        assert 1 <= fold["iterations"] <= 2
        for r in fold["studies"].values():
            assert r["mask_voxels"] > 0 and 0.0 <= r["dice"] <= 1.0
    scores = [r for f in result["folds"] for r in f["studies"].values()]
    assert result["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in scores]))
    for tta in (False, True):  # each held-out study scored with and without flip TTA and the largest component
        for keep in (False, True):
            key = eval_brain_dicom.score_key(tta, keep)
            assert result["mean_" + key] == pytest.approx(np.mean([r[key] for r in scores]))
    means = {(t, k): result["mean_" + eval_brain_dicom.score_key(t, k)] for t in (False, True) for k in (False, True)}
    assert means[result["tta"], result["keep_largest_component"]] == max(means.values())
    assert all(r["predicted_voxels_tta"] >= 0 and Path(r["prediction_tta"]).is_file() for r in scores)
    final = json.loads(Path(result["final"]["overlay"]).read_text())
    assert final["keep_largest_component"] == result["keep_largest_component"]
    assert final["tta"] == result["tta"]
    assert final["in_channels"] == 2 and list(final["channels"]) == ["T1post", "FLAIR"]
    assert result["final"]["kind"] == "all" and Path(result["final"]["weights"][0]).is_file()
    trained = json.loads((out / "T1post+FLAIR" / "all" / "trained.json").read_text())
    assert len(trained["train"]) == 4 and trained["settings"]["val_indices"] == []  # no study held back
    assert result["loss"] == "dice-ce" and final["loss"]["_target_"] == "DiceCELoss"
    with pytest.raises(SystemExit, match="go together"):
        eval_brain_dicom.main([*args, "--train", str(data)])
    # a rerun (after a crash or a stop) scores the models already trained and trains nothing again
    import monai_unet.bundles

    monkeypatch.setattr(monai_unet.bundles, "run_bundle", lambda *a, **k: pytest.fail("trained again"))
    eval_brain_dicom.main([*args, "--budget-min", "0.05", "--set", *tiny])
    again = json.loads((out / "results.json").read_text())["sets"]["T1post+FLAIR"]
    assert again["mean_dice"] == result["mean_dice"]
    assert [f["train_seconds"] for f in again["folds"]] == [f["train_seconds"] for f in result["folds"]]
    with pytest.raises(SystemExit, match="with other settings"):  # other settings never reuse a model
        eval_brain_dicom.main([*args, "--budget-min", "0.1", "--set", *tiny])
    with pytest.raises(SystemExit, match="with other settings"):  # nor another loss
        eval_brain_dicom.main([*args, "--budget-min", "0.05", "--loss", "tversky-ce", "--set", *tiny])
    # nor other training studies under a run's name, with every setting the same (the held-out studies stay first)
    split = ["--train", result["folds"][0]["train"][0], "--test", *sorted(result["folds"][0]["studies"])]
    with pytest.raises(SystemExit, match="trained on other studies"):
        eval_brain_dicom.main([*args, "--budget-min", "0.05", "--set", *tiny, *split])
