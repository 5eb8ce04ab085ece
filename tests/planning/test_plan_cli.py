"""``monai-unet plan`` end to end on a tiny dataset: the table, the file, no overwrite, errors without a
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _plan_data import write_case

from monai_unet.cli import main
from monai_unet.networks import UNet
from monai_unet.planning import PLAN_KEYS


def _plan(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["plan", "--bundle", "unet3d_volume", "--dataset-dir", str(dataset), "--output", str(out), *extra]


def test_plan_command_writes_the_plan_and_prints_the_table(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plans" / "PLAN.json"
    assert main(_plan(tiny_dataset, out, "--memory-mb", "256", "--device", "cpu")) == 0
    printed = capsys.readouterr().out
    for key in PLAN_KEYS:
        assert f"\n{key}" in printed, key
    assert "reason" in printed and "expected training step on this machine" in printed and "MiB measured" in printed
    plan = json.loads(out.read_text())
    assert set(PLAN_KEYS) <= set(plan) and "plan_info" in plan
    assert not list(out.parent.glob(".*tmp*")), "a temporary file was left"
    info = plan["plan_info"]
    assert info["command"].startswith("monai-unet plan --bundle unet3d_volume")
    assert info["options"]["memory_mb"] == 256 and info["measured"]["step_seconds"] > 0
    assert set(info["reasons"]) == set(PLAN_KEYS) & set(plan)
    # the plan is plain JSON of the types the configs read, and its network takes its tiles
    assert all(isinstance(v, (int, float, list)) for k, v in plan.items() if k != "plan_info")
    net = UNet(3, plan["in_channels"], plan["out_channels"], plan["features"], kernel_size=plan["kernel_size"],
               strides=plan["strides"])  # fmt: skip
    assert net.is_valid_size(plan["tile_size"]) and net.is_valid_size(plan["infer_tile_size"])
    assert list(net.output_size(plan["tile_size"])) == info["output_size"] and list(net.halo) == info["halo"]


def test_existing_plan_is_kept_without_overwrite(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "PLAN.json"
    out.write_text("{}")
    assert main(_plan(tiny_dataset, out, "--no-measure", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and "Traceback" not in err
    assert out.read_text() == "{}"
    assert main(_plan(tiny_dataset, out, "--no-measure", "--overwrite", "--device", "cpu", "--memory-mb", "256")) == 0
    assert "tile_size" in json.loads(out.read_text())


def test_bad_data_exits_non_zero_naming_the_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad"
    write_case(root, "fine", (32, 32, 8), seed=0)
    write_case(root, "wrong", (32, 32, 8), seed=1, label_values=(1, 3))
    out = tmp_path / "PLAN.json"
    assert main(_plan(root, out, "--no-measure", "--device", "cpu")) == 2
    err = capsys.readouterr().err
    assert err.startswith("monai-unet plan: label labelsTr/wrong.nii.gz has values 0, 1, 3")
    assert "Traceback" not in err and not out.exists()
    assert main(_plan(tmp_path / "nowhere", out, "--no-measure", "--device", "cpu")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_too_small_a_memory_budget_is_a_clear_error(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_dataset.parent / "PLAN.json"
    assert main(_plan(tiny_dataset, out, "--no-measure", "--device", "cpu", "--memory-mb", "1")) == 2
    assert "too small" in capsys.readouterr().err and not out.exists()


def test_given_target_spacing_replaces_the_rule(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_dataset.parent / "PLAN.json"
    args = _plan(tiny_dataset, out, "--no-measure", "--device", "cpu", "--memory-mb", "256")
    assert main(args) == 0
    ruled = json.loads(out.read_text())
    coarse = [2 * s for s in ruled["target_spacing"]]
    assert main([*args, "--overwrite", "--target-spacing", *map(str, coarse)]) == 0
    plan = json.loads(out.read_text())
    assert plan["target_spacing"] == coarse and plan["plan_info"]["options"]["target_spacing"] == coarse
    assert "as given (--target-spacing" in plan["plan_info"]["reasons"]["target_spacing"]
    assert main([*args, "--overwrite", "--target-spacing", "1", "2"]) == 2
    assert "needs 3 positive values" in capsys.readouterr().err


def test_2d_configuration_plans_slice_by_slice(tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_dataset.parent / "PLAN.json"
    args = ["--no-measure", "--device", "cpu", "--memory-mb", "256", "--configuration", "2d", "--slices", "3"]
    assert main(_plan(tiny_dataset, out, *args)) == 0
    plan = json.loads(out.read_text())
    # z (4 mm, the coarsest) is the slice axis: kernel 1, never pooled, no halo, 3 slices per tile, no elastic
    assert [k[2] for k in plan["kernel_size"]] == [1] * len(plan["kernel_size"])
    assert [s[2] for s in plan["strides"]] == [1] * len(plan["strides"]) and plan["plan_info"]["halo"][2] == 0
    assert plan["tile_size"][2] == 3 and plan["plan_info"]["output_size"][2] == 3
    assert plan["elastic_sigma"][2] == 0.0 and plan["elastic_sigma"][0] > 0
    # nnU-Net's rotation about the slice axis only (any angle) and zoom in plane only: nothing tilts a slice
    assert plan["rotate_range"] == [0.0, 0.0, 3.1416] and plan["scale_range"] == [0.3, 0.3, 0.0]
    assert plan["plan_info"]["options"]["configuration"] == "2d"
    assert plan["plan_info"]["configuration"].startswith("2d (nnU-Net's 2d configuration): slice by slice along z")
    net = UNet(3, plan["in_channels"], plan["out_channels"], plan["features"], kernel_size=plan["kernel_size"],
               strides=plan["strides"])  # fmt: skip
    assert net.is_valid_size(plan["tile_size"]) and net.is_valid_size(plan["infer_tile_size"])
    # the 3d plan of the same data convolves across slices somewhere and has a halo along z
    out3d = tiny_dataset.parent / "PLAN3D.json"
    assert main(_plan(tiny_dataset, out3d, "--no-measure", "--device", "cpu", "--memory-mb", "256")) == 0
    plan3d = json.loads(out3d.read_text())
    assert plan3d["plan_info"]["options"]["configuration"] == "3d" and plan3d["elastic_sigma"][2] > 0
    assert plan3d["rotate_range"] == [0.5236] * 3 and plan3d["scale_range"] == [0.3] * 3


def test_2d_configuration_of_a_2d_bundle_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "PLAN.json"
    args = ["plan", "--bundle", "unet2d_membrane", "--dataset-dir", str(tmp_path), "--output", str(out)]
    assert main([*args, "--no-measure", "--device", "cpu", "--configuration", "2d"]) == 2
    err = capsys.readouterr().err
    assert "--configuration 2d plans a volume slice by slice; unet2d_membrane is 2D already" in err
    assert "Traceback" not in err and not out.exists()


def test_deep_supervision_is_planned_timed_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--deep-supervision 1``: the plan says so and its step is timed with the extra output's loss; a level whose
    voxels do not line up with the top output's is a clear error, and nothing is written."""
    dataset = tmp_path / "wide"  # wide enough slices for four levels
    write_case(dataset, "case_a", (120, 112, 6), seed=1)
    write_case(dataset, "case_b", (128, 120, 6), seed=2)
    out = tmp_path / "PLAN.json"
    args = ["--device", "cpu", "--memory-mb", "256", "--configuration", "2d"]
    assert main(_plan(dataset, out, *args, "--deep-supervision", "1")) == 0
    printed = capsys.readouterr().out
    assert "\ndeep_supervision" in printed and "--deep-supervision 1 as given: decoder levels 1-1" in printed
    plan = json.loads(out.read_text())
    assert plan["deep_supervision"] == 1 and plan["plan_info"]["options"]["deep_supervision"] == 1
    assert plan["plan_info"]["measured"]["step_seconds"] > 0
    levels = len(plan["features"])
    assert levels >= 4, "the tiny dataset plans deep enough to refuse level 2"
    bad = tmp_path / "BAD.json"
    assert main(_plan(dataset, bad, *args, "--no-measure", "--deep-supervision", "2")) == 2
    err = capsys.readouterr().err
    assert "--deep-supervision 2: deep_supervision=2: level 2's voxels do not line up" in err
    assert "Traceback" not in err and not bad.exists()
