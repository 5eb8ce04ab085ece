"""Several checkpoints: their probabilities averaged; flip test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
import torch
from predict_helpers import FEATURES, make_checkpoint, oblique_affine, smooth_volume

from monai_unet.predict.runner import BundleRunner

BUNDLE = "unet3d_volume"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ens")
    a = make_checkpoint(BUNDLE, root / "a.pt")
    b = root / "b.pt"
    state = torch.load(a, weights_only=True)
    torch.manual_seed(1)
    torch.save({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}, b)
    return [a, b]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    from monai.transforms import LoadImage

    path = tmp_path_factory.mktemp("vol") / "v.nii.gz"
    nib.save(nib.Nifti1Image(smooth_volume((30, 28, 10)), oblique_affine()), path)
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


def runner(checkpoint, **kwargs) -> BundleRunner:
    overrides = {"features": FEATURES[BUNDLE], "infer_tile_size": None}
    return BundleRunner(BUNDLE, checkpoint=checkpoint, device="cpu", overrides=overrides, **kwargs)


def test_an_ensemble_averages_the_members_probabilities(two_checkpoints, volume) -> None:
    a, b = (runner(c).run(volume.clone(), probabilities=True) for c in two_checkpoints)
    both = runner(two_checkpoints).run(volume.clone(), probabilities=True)
    torch.testing.assert_close(both["prob"], (a["prob"] + b["prob"]) / 2, atol=1e-5, rtol=1e-5)
    assert not torch.equal(a["prob"], b["prob"])  # the members differ, so the average says something


def test_tta_probabilities_are_activated_once(two_checkpoints, volume) -> None:
    """With tta the inferer averages the flips' probabilities (exact per the inferer's own tests); the runner must
    not activate them again: two-class probabilities softmaxed twice could never exceed 0.731."""
    plain, tta = runner(two_checkpoints[0]), runner(two_checkpoints[0], tta=True)
    assert tta.inferer.tta and not plain.inferer.tta  # the bundle's inferer itself is left as it was
    prob = tta.run(volume.clone(), probabilities=True)["prob"]
    torch.testing.assert_close(prob.sum(0), torch.ones_like(prob[0]), atol=1e-4, rtol=1e-4)
    assert float(prob.max()) > 0.75
    single = plain.run(volume.clone(), probabilities=True)["prob"]
    assert not torch.allclose(prob, single, atol=1e-3)  # the flips did change something
    agree = float((prob.argmax(0) == single.argmax(0)).float().mean())
    assert agree > 0.8, agree


def test_an_overlay_with_tta_runs_as_the_tta_option(two_checkpoints, volume, tmp_path: Path) -> None:
    """The 3D bundle's ``tta`` (which scripts/eval_brain_dicom.py writes into the final overlay when the
    cross-validation chooses it) gives what ``tta=True`` gives, without the option."""
    import json

    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"tta": True}))
    by_config = runner(two_checkpoints[0], overlays=[overlay])
    assert by_config.inferer.tta
    prob = by_config.run(volume.clone(), probabilities=True)["prob"]
    by_option = runner(two_checkpoints[0], tta=True).run(volume.clone(), probabilities=True)["prob"]
    torch.testing.assert_close(prob, by_option)
    assert not runner(two_checkpoints[0]).inferer.tta  # the bundle's default: no tta


def test_a_checkpoint_list_names_the_one_that_does_not_fit(two_checkpoints, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"final.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt does not fit"):
        runner([two_checkpoints[0], bad])
