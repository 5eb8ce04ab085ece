"""The MONAI Label app's parts without a server: label conventions, 2D loading, app folder, train config, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_unet.cli import build_parser
from monai_unet.label.server import UNTRAINED_MARKER, prepare_app_dir, selected_models, server_argv
from monai_unet.label.transforms import LoadImage2Dd, image_spatial_dims, membrane_classes


def test_membrane_classes_reads_both_conventions() -> None:
    classes = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    isbi = np.where(classes == 1, 0, 255).astype(np.uint8)  # ISBI 2012: 0 = membrane, 255 = cell
    np.testing.assert_array_equal(membrane_classes(classes), classes)
    np.testing.assert_array_equal(membrane_classes(isbi), classes)
    np.testing.assert_array_equal(membrane_classes(torch.as_tensor(isbi)).numpy(), classes)
    np.testing.assert_array_equal(membrane_classes(np.zeros((2, 2))), np.zeros((2, 2)))  # no membrane marked


def _label_files(tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    rng = np.random.default_rng(0)
    classes = (rng.random((24, 32)) > 0.7).astype(np.uint8)  # (H, W) as a PNG holds it
    png = tmp_path / "a.png"
    Image.fromarray(classes).save(png)
    nii = tmp_path / "a.nii.gz"  # what 3D Slicer saves for a labelmap of a 2D image: x first, one slice
    nib.save(nib.Nifti1Image(classes.T[..., None], np.eye(4)), nii)
    return classes, png, nii


def test_load_image_2d_gives_the_same_array_for_png_and_single_slice_nifti(tmp_path: Path) -> None:
    classes, png, nii = _label_files(tmp_path)
    load = LoadImage2Dd(keys="label")
    from_png = load({"label": str(png)})["label"]
    from_nii = load({"label": str(nii)})["label"]
    assert tuple(from_png.shape) == (1, 32, 24)  # (C, W, H): MONAI's x-first order
    np.testing.assert_array_equal(np.asarray(from_png), np.asarray(from_nii))
    np.testing.assert_array_equal(np.asarray(from_png)[0].T, classes)


def test_load_image_2d_rejects_a_volume_naming_it(tmp_path: Path) -> None:
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), vol)
    with pytest.raises(ValueError, match=r"vol\.nii\.gz.*2D"):
        LoadImage2Dd(keys="image")({"image": str(vol)})


def test_image_spatial_dims(tmp_path: Path) -> None:
    _, png, nii = _label_files(tmp_path)
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), vol)
    assert image_spatial_dims(png) == 2
    assert image_spatial_dims(nii) == 2
    assert image_spatial_dims(vol) == 3
    assert image_spatial_dims(tmp_path) == 3  # a DICOM series folder
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32)), str(tmp_path / "vol.mha"))
    assert image_spatial_dims(tmp_path / "vol.mha") == 3  # every format ITK reads, from its header
    with pytest.raises(ValueError, match=r"x\.mha: cannot read the image header"):
        image_spatial_dims(tmp_path / "x.mha")
    with pytest.raises(ValueError, match="unknown image type"):
        image_spatial_dims(tmp_path / "x.xyz")


def test_selected_models() -> None:
    assert selected_models("all") == ["unet2d_membrane", "unet3d_volume"]
    assert selected_models("unet3d_volume") == ["unet3d_volume"]
    with pytest.raises(ValueError, match="unknown model"):
        selected_models("unet2d,unet3d_volume")


def test_prepare_app_dir_initial_then_given_weights(tmp_path: Path) -> None:
    app = prepare_app_dir(tmp_path / "app", "unet2d_membrane")
    folder = app / "model" / "unet2d_membrane"
    assert "MonaiUnetApp" in (app / "main.py").read_text()
    assert (folder / "configs" / "inference.json").is_file() and (folder / "configs" / "train.json").is_file()
    assert not (app / "model" / "unet3d_volume").exists()
    initial = torch.load(folder / "models" / "model.pt")["model"]
    assert (folder / "models" / UNTRAINED_MARKER).is_file()

    prepare_app_dir(app, "unet2d_membrane")  # a restart keeps the weights
    assert all(torch.equal(v, initial[k]) for k, v in torch.load(folder / "models" / "model.pt")["model"].items())

    trained = {k: v + 1 for k, v in initial.items()}  # the same network, other weights
    torch.save({"model": trained}, tmp_path / "trained.pt")
    prepare_app_dir(app, "unet2d_membrane", weights={"unet2d_membrane": tmp_path / "trained.pt"})
    served = torch.load(folder / "models" / "model.pt")["model"]
    assert all(torch.equal(v, trained[k]) for k, v in served.items())
    assert not (folder / "models" / UNTRAINED_MARKER).exists()

    torch.save({"model": {k: v for k, v in trained.items() if "bias" not in k}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit the unet2d_membrane network"):
        prepare_app_dir(app, "unet2d_membrane", weights={"unet2d_membrane": tmp_path / "other.pt"})
    assert _sha1(folder / "models" / "model.pt") == _sha1(tmp_path / "trained.pt")  # still the good weights

    # served weights that no longer fit (the bundle's network changed): refused at start, fixed by --model
    (folder / "models" / "model.pt").write_bytes((tmp_path / "other.pt").read_bytes())
    with pytest.raises(ValueError, match="does not fit"):
        prepare_app_dir(app, "unet2d_membrane")
    prepare_app_dir(app, "unet2d_membrane", weights={"unet2d_membrane": tmp_path / "trained.pt"})
    assert _sha1(folder / "models" / "model.pt") == _sha1(tmp_path / "trained.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        prepare_app_dir(app, "unet2d_membrane", weights={"unet2d_membrane": tmp_path / "missing.pt"})
    with pytest.raises(ValueError, match="not served"):
        prepare_app_dir(app, "unet2d_membrane", weights={"unet3d_volume": tmp_path / "trained.pt"})


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_cli_label_listens_on_loopback_by_default() -> None:
    args = build_parser().parse_args(["label", "--studies", "s"])
    assert (args.host, args.port, args.models) == ("127.0.0.1", 8000, "all")
    argv = server_argv("app", "s", args.host, args.port, {"models": "all"})
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_2d_train_task_reads_any_2d_file_and_both_label_conventions(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    from monai_unet.label.trainers import UNetTrainTask

    app = prepare_app_dir(tmp_path / "app", "unet2d_membrane")
    task = UNetTrainTask(str(app / "model" / "unet2d_membrane"), {}, spatial_dims=2)
    parser = ConfigParser({"imports": ["$import monai_unet"], "t": task._load_transforms_2d()})
    transforms = parser.get_parsed_content("t")
    classes, png, nii = _label_files(tmp_path)
    Image.fromarray(np.where(classes == 1, 0, 255).astype(np.uint8)).save(tmp_path / "isbi.png")
    for label in (png, nii, tmp_path / "isbi.png"):
        d = {"image": str(png), "label": str(label)}
        for t in transforms:
            d = t(d)
        np.testing.assert_array_equal(np.asarray(d["label"])[0].T, classes, err_msg=str(label))


def test_2d_train_task_notices_a_changed_bundle_config(tmp_path: Path) -> None:
    from monai_unet.label.trainers import UNetTrainTask

    app = prepare_app_dir(tmp_path / "app", "unet2d_membrane")
    task = UNetTrainTask(str(app / "model" / "unet2d_membrane"), {}, spatial_dims=2)
    task.bundle_config.config["load_transforms"] = [
        t for t in task.bundle_config.config["load_transforms"] if t["_target_"] != "Lambdad"
    ]
    with pytest.raises(ValueError, match="isbi_membrane_label"):
        task._load_transforms_2d()


def test_infer_task_refuses_an_image_of_the_other_dimension(tmp_path: Path) -> None:
    from monai_unet.label.infers import UNetInferTask

    app = prepare_app_dir(tmp_path / "app", "unet3d_volume")
    task = UNetInferTask(str(app / "model" / "unet3d_volume"), {})
    assert task.is_valid() and task.dimension == 3
    _, png, _ = _label_files(tmp_path)
    with pytest.raises(ValueError, match="2D image but model unet3d_volume segments 3D images: use the unet2d"):
        task({"image": str(png)})
