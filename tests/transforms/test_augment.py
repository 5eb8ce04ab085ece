"""The paper's 2D deformation as MONAI's Rand2DElasticd, measured; the recommended augmentation pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from monai_unet.transforms import paper_elastic_2d, recommended_augmentations

SIZE = 256  # control spacing 128: MONAI's lattice puts control points at pixels 63.5 and 191.5


def ramps(size: int) -> torch.Tensor:
    return torch.stack(
        torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    )


def displacement(t, size: int = SIZE) -> torch.Tensor:
    """The field ``u`` (2, H, W) the transform applied: a bilinear ramp reads back ``x + u(x)``."""
    return t({"image": ramps(size)})["image"].as_tensor() - ramps(size)


def test_paper_deformation_statistics():
    t = paper_elastic_2d(keys=["image"], spatial_size=SIZE, padding_mode="border")
    t.set_random_state(0)
    at_control, slopes, bends = [], [], []
    for _ in range(60):
        u = displacement(t)
        at_control.append(u[:, [63, 192]][:, :, [63, 192]].flatten())  # next to the four inner control points
        centre = u[:, 48:208, 48:208]  # read from inside the image (the border padding clamps the ramp)
        slopes.append(max(centre.diff(dim=d).abs().max().item() for d in (1, 2)))
        bends.append(max(centre.diff(dim=d, n=2).abs().max().item() for d in (1, 2)))
    at_control = torch.cat(at_control)
    # control-point displacements are normal with standard deviation 10 px
    assert at_control.std().item() == pytest.approx(10.0, abs=0.8)
    assert abs(at_control.mean().item()) < 1.0
    # smooth: neighbouring pixels never swap places (slope < 1 px/px) and the field barely bends from one pixel
    # to the next (independent per-pixel displacements of 10 px would give second differences around 25 px)
    assert max(slopes) < 1.0
    assert max(bends) < 0.1


def test_paper_deformation_moves_image_and_label_together_with_nearest_labels(shared_data):
    root = shared_data / "isbi2012"
    image = torch.as_tensor(np.array(Image.open(root / "images" / "train_00.png")), dtype=torch.float32)[None] / 255
    label = torch.as_tensor(np.array(Image.open(root / "labels" / "train_00.png")), dtype=torch.float32)[None]
    t = paper_elastic_2d(keys=["image", "label", "coords"], spatial_size=512, image_keys=["image", "coords"])
    t.set_random_state(1)
    out = t({"image": image, "label": label, "coords": ramps(512)})
    assert out["label"].shape == (1, 512, 512)
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 255.0}  # nearest neighbour: values kept
    source = out["coords"].as_tensor()
    assert (source - ramps(512)).abs().max() > 5.0
    rounded = source.round()
    ok = ((source - rounded).abs() < 0.45).all(0) & (rounded >= 0).all(0) & (rounded <= 511).all(0)
    expected = label[0][rounded[0].long().clamp(0, 511), rounded[1].long().clamp(0, 511)]
    assert ok.float().mean() > 0.5
    assert torch.equal(out["label"][0][ok], expected[ok])  # the label went where the image went


def test_paper_config_is_monai_rand2delasticd():
    t = paper_elastic_2d(spatial_size=(572, 572))
    assert type(t).__name__ == "Rand2DElasticd"
    assert tuple(t.rand_2d_elastic.deform_grid.spacing) == (286.0, 286.0)
    assert t.rand_2d_elastic.deform_grid.magnitude == (10.0, 10.0)
    assert tuple(t.mode) == ("bilinear", "nearest")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_recommended_augmentations_keep_labels_and_size(spatial_dims):
    size = (48, 48) if spatial_dims == 2 else (32, 32, 8)
    source = (40, 56) if spatial_dims == 2 else (40, 30, 12)
    rng = np.random.default_rng(0)
    data = {
        "image": torch.as_tensor(rng.random((1, *source)), dtype=torch.float32),
        "label": torch.as_tensor(rng.integers(0, 2, (1, *source)) * 255, dtype=torch.float32),
    }
    aug = recommended_augmentations(spatial_size=size, spatial_dims=spatial_dims, elastic_sigma=4.0)
    aug.set_random_state(0)
    a = aug(dict(data))
    assert a["image"].shape == (1, *size) and a["label"].shape == (1, *size)
    assert set(torch.unique(a["label"]).tolist()) <= {0.0, 255.0}
    aug.set_random_state(0)
    assert torch.equal(aug(dict(data))["image"], a["image"])  # reproducible from the seed


def test_in_plane_rotation_and_scaling_move_image_and_label_together_slice_by_slice():
    # a 2d plan's rotation about the slice axis and in-plane zoom: labels stay labels, every slice stays its own
    # slice (a label drawn only on slice 1 is only on slice 1 afterwards), and the image moves with the label
    size = (40, 40, 3)
    image = torch.zeros((1, *size))
    image[0, 12:28, 8:20, 1] = 1.0
    label = (image > 0.5).float()
    aug = recommended_augmentations(
        spatial_size=size,
        spatial_dims=3,
        elastic_sigma=(0.0, 0.0, 0.0),
        elastic_prob=0.0,
        intensity_prob=0.0,
        rotate_range=(0.0, 0.0, 3.1416),
        scale_range=(0.3, 0.3, 0.0),
        affine_prob=1.0,
    )
    names = [type(t).__name__ for t in aug.transforms]
    assert "RandAffined" in names
    # what flips and 90-degree turns alone make of the label (the pipeline has both)
    flipped_or_turned = [torch.rot90(b, k, (0, 1)) for b in (label[0], label[0].flip(0)) for k in range(4)]
    flipped_or_turned += [x.flip(2) for x in flipped_or_turned]
    moved = 0
    for seed in range(4):
        aug.set_random_state(seed)
        out = aug({"image": image.clone(), "label": label.clone()})
        lab, img = out["label"][0], out["image"][0]
        assert lab.shape == size and set(torch.unique(lab).tolist()) <= {0.0, 1.0}
        assert lab[..., 0].sum() == 0 and lab[..., 2].sum() == 0 and lab[..., 1].sum() > 50
        assert ((img[..., 1] > 0.5) == (lab[..., 1] > 0.5)).float().mean() > 0.97
        moved += int(not any(torch.equal(lab, x) for x in flipped_or_turned))
    assert moved >= 2  # rotated or zoomed, not only flipped


def test_no_affine_unless_asked():
    aug = recommended_augmentations(spatial_size=(32, 32, 8), spatial_dims=3, elastic_sigma=4.0)
    assert "RandAffined" not in [type(t).__name__ for t in aug.transforms]
    with pytest.raises(ValueError, match="rotate_range and scale_range are for 3D"):
        recommended_augmentations(spatial_size=(32, 32), spatial_dims=2, rotate_range=0.5)


@pytest.mark.parametrize("channel_wise", [False, True])
def test_intensity_scale_and_shift_per_channel(channel_wise):
    """With ``channel_wise`` each sequence of a multi-channel image gets its own scale and shift (nnU-Net's
    per-channel brightness and contrast), within +-intensity_scale; without, one for all channels."""
    aug = recommended_augmentations(
        keys=("image",), spatial_size=(16, 16, 4), spatial_dims=3, elastic_prob=0.0, intensity_prob=1.0,
        intensity_scale=0.25, channel_wise=channel_wise, noise_std=0.0,
    )  # fmt: skip
    scale_shift = [t for t in aug.transforms if type(t).__name__ in ("RandScaleIntensityd", "RandShiftIntensityd")]
    assert len(scale_shift) == 2
    image = torch.ones((4, 16, 16, 4))
    aug.set_random_state(seed=0)
    out = Compose(scale_shift)({"image": image})["image"].as_tensor()
    per_channel = out.flatten(1)
    assert torch.allclose(per_channel, per_channel[:, :1])  # each channel changed as a whole
    values = per_channel[:, 0]
    assert ((values >= 0.75 * 1 - 0.25) & (values <= 1.25 * 1 + 0.25)).all()
    assert (len(set(values.tolist())) == 4) == channel_wise


def test_intensity_scale_checked():
    with pytest.raises(ValueError, match="intensity_scale"):
        recommended_augmentations(spatial_size=(32, 32, 8), spatial_dims=3, intensity_scale=1.5)
