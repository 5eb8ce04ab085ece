"""The 3D bundle reads a plan (``monai-unet plan``'s PLAN.json) through its config keys: network, spacing,
normalisation, tiles, crops, batch, oversampling; without a plan it keeps its recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _bundle_utils import BUNDLES
from monai.bundle import ConfigParser
from monai.transforms import (
    CenterSpatialCropd,
    RandCropByPosNegLabeld,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from monai_unet.networks import UNet
from monai_unet.planning import PLAN_KEYS, PlanOptions, make_plan, write_plan
from monai_unet.transforms import PlannedNormalized

CONFIGS = BUNDLES / "unet3d_volume" / "configs"
BRAIN_PLAN = CONFIGS / "brain_tumor_progression.json"


def _parser(*files: Path | str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f if isinstance(f, Path) else CONFIGS / f"{f}.json") for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _one(transforms: list, cls: type):
    found = [t for t in transforms if isinstance(t, cls)]
    assert len(found) == 1, (cls, transforms)
    return found[0]


def test_the_committed_plan_is_a_plain_overlay() -> None:
    plan = json.loads(BRAIN_PLAN.read_text())
    assert set(plan) == {*PLAN_KEYS, "plan_info"}  # a 3D plan has every key (the 2D one no elastic_sigma)
    assert "$" not in json.dumps({k: v for k, v in plan.items() if k != "plan_info"})
    train = json.loads((CONFIGS / "train.json").read_text())
    assert all(key in train for key in PLAN_KEYS), "train.json defines a default for every plan key"


@pytest.mark.parametrize("extra", [(), ("evaluate",)])
def test_train_config_reads_the_plan(extra: tuple[str, ...], tmp_path: Path) -> None:
    plan = json.loads(BRAIN_PLAN.read_text())
    parser = _parser("train", *extra, BRAIN_PLAN, bundle_root=str(tmp_path), num_workers=0)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, UNet) and list(net.features) == plan["features"]
    assert [list(k) for k in net.kernel_size] == plan["kernel_size"]
    assert [list(s) for s in net.strides] == plan["strides"]
    assert (net.in_channels, net.out_channels) == (plan["in_channels"], plan["out_channels"])
    tile = plan["tile_size"]
    assert net.is_valid_size(tile) and list(net.output_size(tile)) == plan["plan_info"]["output_size"]
    assert list(net.halo) == plan["plan_info"]["halo"]

    loading = parser.get_parsed_content("load_transforms")
    assert list(_one(loading, Spacingd).spacing_transform.pixdim) == plan["target_spacing"]
    assert _one(loading, PlannedNormalized).normalizer.schemes == plan["normalization"]
    randoms = parser.get_parsed_content("train#random_transforms")
    assert list(_one(randoms, SpatialPadd).padder.spatial_size) == tile
    crop = _one(randoms, RandCropByPosNegLabeld)
    assert list(crop.cropper.spatial_size) == tile
    assert crop.cropper.pos_ratio == pytest.approx(plan["oversample_foreground"])
    label_crop = _one(randoms, CenterSpatialCropd)
    assert list(label_crop.cropper.roi_size) == list(net.output_size(tile))
    assert parser.get_parsed_content("train#dataloader#batch_size") == plan["batch_size"]
    assert list(parser.get_parsed_content("validate#inferer").tile_size) == plan["infer_tile_size"]
    assert parser.get_parsed_content("validate#postprocessing").transforms[1].to_onehot[0] == plan["out_channels"]


def test_inference_config_reads_the_plan(tmp_path: Path) -> None:
    plan = json.loads(BRAIN_PLAN.read_text())
    parser = _parser("inference", BRAIN_PLAN, bundle_root=str(tmp_path), datalist=[])
    net = parser.get_parsed_content("network_def")
    assert [list(k) for k in net.kernel_size] == plan["kernel_size"] and list(net.features) == plan["features"]
    pre = parser.get_parsed_content("preprocessing").transforms
    assert list(_one(pre, Spacingd).spacing_transform.pixdim) == plan["target_spacing"]
    assert _one(pre, PlannedNormalized).normalizer.schemes == plan["normalization"]
    assert list(parser.get_parsed_content("inferer").tile_size) == plan["infer_tile_size"]
    train = _parser("train", BRAIN_PLAN)
    assert train.get_parsed_content("network_def").state_dict().keys() == net.state_dict().keys()


def test_multi_gpu_overlay_keeps_the_plan_keys() -> None:
    parser = _parser("train", "multi_gpu_train", BRAIN_PLAN)
    plan = json.loads(BRAIN_PLAN.read_text())
    assert parser.get("train#dataloader#batch_size") == "@batch_size" and parser.get("batch_size") == plan["batch_size"]
    assert parser.get("network_def#kernel_size") == "@kernel_size" and parser.get("kernel_size") == plan["kernel_size"]


def test_defaults_keep_the_recipe(tiny_volumes: Path, tmp_path: Path) -> None:
    """Without a plan: features 8-16-32 with 3x3x3 kernels and 2x pooling, tile 92x92x60, 2x2x3 mm, half the
    tiles on the structure, one tile per step, and the 0.5-99.5 percentile scaling to [0, 1] as before."""
    parser = _parser("train", bundle_root=str(tmp_path), dataset_dir=str(tiny_volumes), num_workers=0)
    net = parser.get_parsed_content("network_def")
    assert net.kernel_size == ((3, 3, 3),) * 3 and net.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2))
    assert net.features == (8, 16, 32) and parser.get_parsed_content("tile_size") == [92, 92, 60]
    randoms = parser.get_parsed_content("train#random_transforms")
    assert _one(randoms, RandCropByPosNegLabeld).cropper.pos_ratio == 0.5
    assert parser.get_parsed_content("train#dataloader#batch_size") == 1
    loading = parser.get_parsed_content("load_transforms")
    norm = _one(loading, PlannedNormalized)
    img = torch.rand(1, 20, 20, 10) * 300
    old = ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True)({"image": img})["image"]
    torch.testing.assert_close(norm({"image": img})["image"], old, rtol=0, atol=0)


def test_a_plan_of_a_small_dataset_gives_training_samples_of_its_tile(tiny_volumes: Path, tmp_path: Path) -> None:
    """Plan the tiny synthetic volumes, merge the plan over train.json and read one training sample: the image is
    the planned tile, the label the planned network's output; the validation inferer takes the planned tile."""
    plan = make_plan("unet3d_volume", tiny_volumes, PlanOptions.for_device("cpu", memory_mb=400), measure=False)
    path = write_plan(plan, tmp_path / "PLAN.json")
    parser = _parser("train", path, bundle_root=str(tmp_path), dataset_dir=str(tiny_volumes), num_workers=0)
    net = parser.get_parsed_content("network_def")
    sample = parser.get_parsed_content("train#dataset")[0]
    sample = sample[0] if isinstance(sample, list) else sample
    assert list(sample["image"].shape) == [plan["in_channels"], *plan["tile_size"]]
    assert tuple(sample["label"].shape[1:]) == net.output_size(plan["tile_size"])
    with torch.no_grad():
        out = net.eval()(sample["image"][None])
    assert out.shape[1:] == (plan["out_channels"], *net.output_size(plan["tile_size"]))
