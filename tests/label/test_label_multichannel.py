"""``monai-unet label --model NAME=CKPT --config NAME=OVERLAY``: a multi-sequence model served to MONAI Label.

A tiny two-channel plan (T1post, FLAIR; made from the committed brain tumour plan) with random weights is served by
a real server; the image MONAI Label hands the model is a 4D NIfTI ``(X, Y, Z, 2)`` holding the sequences in the
model's channel order, one file per study. Its label must be a 3D volume on the image's grid, voxel for voxel what
``monai-unet predict`` gives with the same overlay and weights; an image with another number of channels must be
refused with a message naming the image and the channels the model wants; a submitted label trains the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.client.client import MONAILabelClientException
from test_server import Server, _train

from monai_unet.cli import main
from monai_unet.label.server import OVERLAY_FILE, prepare_app_dir

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "unet3d_volume"
CHANNELS = {"T1post": "*T1post*", "FLAIR": "*FLAIR*"}
_BLOB = (slice(10, 20), slice(8, 18), slice(4, 9))  # the tumour of the synthetic study


def _tiny_overlay(path: Path) -> tuple[Path, list[int]]:
    """The committed brain tumour plan with two channels, two levels of 2 and 4 features and small valid tiles; and
    an image shape (at the plan's spacing) that takes several inference tiles per axis and is not a valid size."""
    from monai_unet.networks import UNet

    plan = json.loads((REPO / "bundles" / BUNDLE / "configs" / "brain_tumor_progression.json").read_text())
    plan.pop("plan_info", None)
    plan["features"] = [2, 4]
    kernels, strides = plan.get("kernel_size"), plan.get("strides")
    plan["kernel_size"] = [kernels[0], kernels[-1]] if kernels else None
    plan["strides"] = strides[:2] if strides else None
    net = UNet(3, 2, 2, features=plan["features"], kernel_size=plan["kernel_size"], strides=plan["strides"])
    plan["tile_size"] = [r.first + r.step for r in net.axis_rules]
    plan["infer_tile_size"] = [r.first + 8 * r.step for r in net.axis_rules]
    plan["channels"], plan["in_channels"] = CHANNELS, len(CHANNELS)
    plan["normalization"] = [
        {"scheme": "zscore", "nonzero": False},
        {"scheme": "percentile_range", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True},
    ]
    path.write_text(json.dumps(plan))
    return path, [r.first + 12 * r.step + 1 for r in net.axis_rules]


def _random_weights(overlay: Path, image: Path, path: Path) -> Path:
    """Random weights of the overlay's network (the one ``monai-unet predict --config`` builds), the last bias set so
    that 30-70% of ``image`` is foreground: a label a wrong channel order or grid would change."""
    from monai_unet.bundles import inference_workflow

    torch.manual_seed(1)
    workflow = inference_workflow(BUNDLE, overrides={"device": "$torch.device('cpu')"}, overlays=[overlay])
    network = workflow.network_def.eval()
    last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 2][-1]
    with torch.no_grad():
        x = workflow.preprocessing({"image": str(image)})["image"][None]
        logits = workflow.inferer(x, network)[0]
        # the boundary in the widest gap between the middle 40% of the logit differences: no voxel near a tie
        d = (logits[1] - logits[0]).flatten().sort().values
        lo, hi = len(d) * 3 // 10, len(d) * 7 // 10
        k = lo + int(torch.argmax(d[lo + 1 : hi + 1] - d[lo:hi]))
        last.bias[1] -= (d[k] + d[k + 1]) / 2
    torch.save({"model": network.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The overlay, its weights, and a studies folder: a two-sequence study (4D NIfTI) and a T1-only volume."""
    root = tmp_path_factory.mktemp("multichannel")
    overlay, shape = _tiny_overlay(root / "final_overlay.json")
    rng = np.random.default_rng(0)
    spacing = json.loads(overlay.read_text())["target_spacing"]  # the plan's grid: no resampling needed
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (12.0, -30.0, 4.0)
    t1 = rng.normal(500.0, 60.0, shape).astype(np.float32)
    t1[_BLOB] += 300.0  # an enhancing blob
    flair = (0.5 * t1 + rng.normal(200.0, 30.0, t1.shape)).astype(np.float32)
    studies = root / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(np.stack([t1, flair], axis=-1), affine), studies / "study1.nii.gz")
    nib.save(nib.Nifti1Image(t1, affine), studies / "t1only.nii.gz")
    channel_files = root / "channel_files"  # the same study as nnU-Net channel files, for monai-unet predict
    channel_files.mkdir()
    for i, image in enumerate((t1, flair)):
        nib.save(nib.Nifti1Image(image, affine), channel_files / f"study1_{i:04d}.nii.gz")
    weights = _random_weights(overlay, studies / "study1.nii.gz", root / "model.pt")
    return {"root": root, "overlay": overlay, "weights": weights, "studies": studies, "channel_files": channel_files}


@pytest.fixture(scope="module")
def server(model: dict[str, Path]):
    args = ["--models", BUNDLE, "--model", f"{BUNDLE}={model['weights']}", "--config", f"{BUNDLE}={model['overlay']}"]
    root = model["root"] / "server"
    root.mkdir()
    srv = Server(root, model["studies"], args)
    try:
        srv.info = srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_overlay_is_kept_with_the_weights_and_errors_come_before_the_start(
    model: dict[str, Path], tmp_path: Path
) -> None:
    app = prepare_app_dir(tmp_path / "app", BUNDLE, overlays={BUNDLE: [model["overlay"]]})
    configs = app / "model" / BUNDLE / "configs"
    for name in ("inference.json", "train.json"):  # what MONAI Label's infer and train tasks read
        config = json.loads((configs / name).read_text())
        assert (config["in_channels"], config["channels"], config["features"]) == (2, CHANNELS, [2, 4]), name
    meta = json.loads((configs / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert (meta["num_channels"], meta["channel_def"]) == (2, {"0": "T1post", "1": "FLAIR"})

    prepare_app_dir(app, BUNDLE)  # a restart refreshes the configs and merges the kept overlay again
    assert json.loads((configs / "inference.json").read_text())["in_channels"] == 2
    prepare_app_dir(app, BUNDLE, overlays={BUNDLE: []})  # the bundle's own configs; untrained weights follow
    assert json.loads((configs / "inference.json").read_text())["in_channels"] == 1
    assert not (configs / OVERLAY_FILE).exists()
    with pytest.raises(ValueError, match=r"does not fit the unet3d_volume network .*\(no overlay\).*--config"):
        prepare_app_dir(app, BUNDLE, weights={BUNDLE: model["weights"]})

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    studies, app_dir = str(model["studies"]), str(tmp_path / "cli_app")
    for config, message in (
        (f"{BUNDLE}={tmp_path / 'missing.json'}", "no such overlay file"),
        (f"{BUNDLE}={bad}", "bad.json is not a JSON/YAML config"),
        (f"unet3d={model['overlay']}", "--config given for unet3d: no such bundle"),
        (str(model["overlay"]), "not of the form NAME=OVERLAY"),
    ):
        with pytest.raises(SystemExit, match=message):
            main(["label", "--studies", studies, "--app-dir", app_dir, "--models", BUNDLE, "--config", config])
    config = f"{BUNDLE}={model['overlay']}"
    with pytest.raises(SystemExit, match="--config given for unet3d_volume, which is not served"):
        main(["label", "--studies", studies, "--app-dir", app_dir, "--models", "unet2d_membrane", "--config", config])


def test_4d_nifti_label_is_3d_on_the_image_grid_and_is_the_predict_result(
    server: Server, model: dict[str, Path], tmp_path: Path
) -> None:
    from monai_unet.predict import predict

    info = server.info["models"][BUNDLE]
    assert "T1post, FLAIR, in this order" in info["description"]
    path, params = server.client().infer(BUNDLE, "study1", {})
    assert params["label_names"] == {"structure": 1}
    label, image = nib.load(path), nib.load(model["studies"] / "study1.nii.gz")
    assert label.shape == image.shape[:3]  # 3D, not (X, Y, Z, 2)
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    got = np.asarray(label.dataobj)

    configs, weights = [model["overlay"]], model["weights"]
    predict(BUNDLE, [model["channel_files"]], tmp_path, checkpoint=weights, configs=configs, progress=False)
    want = np.asarray(nib.load(tmp_path / "study1_seg.nii.gz").dataobj)
    assert 0 < int(want.sum()) < want.size  # random weights that still draw a boundary: the comparison can fail
    np.testing.assert_array_equal(got, want)

    swapped = tmp_path / "swapped"  # the channel order matters: T1post and FLAIR swapped give another label
    swapped.mkdir()
    for i in range(2):
        (swapped / f"study1_{1 - i:04d}.nii.gz").symlink_to(model["channel_files"] / f"study1_{i:04d}.nii.gz")
    predict(BUNDLE, [swapped], tmp_path / "out", checkpoint=weights, configs=configs, progress=False)
    assert not np.array_equal(np.asarray(nib.load(tmp_path / "out" / "study1_seg.nii.gz").dataobj), want)


def test_image_with_other_channels_is_refused_naming_what_the_model_wants(server: Server) -> None:
    with pytest.raises(MONAILabelClientException) as e:
        server.client().infer(BUNDLE, "t1only", {})
    assert e.value.msg.startswith("Status: 422;"), e.value.msg  # the reason reaches the client (Slicer shows it)
    assert "t1only.nii.gz has 1 channel(s) but model unet3d_volume takes 2: T1post, FLAIR" in e.value.msg
    assert "4D NIfTI (X, Y, Z, 2)" in e.value.msg


def test_corrected_label_trains_the_multichannel_model(server: Server, model: dict[str, Path], tmp_path: Path) -> None:
    """The overlay reaches ``train.json`` too: a label submitted for a 4D study fine-tunes the two-channel model."""
    model_pt = server.app_dir / "model" / BUNDLE / "models" / "model.pt"
    before = hashlib.sha1(model_pt.read_bytes()).hexdigest()
    image = nib.load(model["studies"] / "study1.nii.gz")
    mask = np.zeros(image.shape[:3], np.uint8)
    mask[_BLOB] = 1
    nib.save(nib.Nifti1Image(mask, image.affine), tmp_path / "study1_label.nii.gz")
    server.client().save_label("study1", str(tmp_path / "study1_label.nii.gz"), tag="final")
    _train(server, BUNDLE, epoch_length=1)
    assert hashlib.sha1(model_pt.read_bytes()).hexdigest() != before, "training did not publish models/model.pt"
    path, _ = server.client().infer(BUNDLE, "study1", {})  # the new weights are served
    assert nib.load(path).shape == image.shape[:3]
