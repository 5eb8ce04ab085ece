"""The recipe inside MONAI's engines: a bundle-style config with the paper's deformation, the weight map in the
label, labels cropped to the valid output; SupervisedTrainer iterations; an evaluator with the ISBI metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, from_engine
from monai.losses import DiceFocalLoss
from monai.metrics import DiceMetric
from monai.transforms import AsDiscreted, CenterSpatialCropd, Compose, ConcatItemsd
from scipy import ndimage as ndi

from monai_unet.losses import WeightedCrossEntropyLoss
from monai_unet.metrics import PixelError, RandError, compute_pixel_error, compute_rand_error
from monai_unet.networks import UNet
from monai_unet.transforms import BorderWeightMapd

PATCH = 68  # valid for features (4, 8, 16): output 28


def bundle_config(data_dir: str, weighted: bool) -> dict:
    """What a bundle's train.json holds (as a dict): the paper's 2D recipe on ISBI 2012, membrane as class 1."""
    crop = {"_target_": "CenterSpatialCropd", "keys": "label", "roi_size": "$@network_def.output_size(@patch_size)"}
    weight = [
        {
            "_target_": "monai_unet.transforms.BorderWeightMapd",
            "keys": "label",
            "weight_keys": "weight",
            "foreground": 0,
        },
        {"_target_": "ConcatItemsd", "keys": ["label", "weight"], "name": "label"},
    ]
    return {
        "patch_size": [PATCH, PATCH],
        "network_def": {
            "_target_": "monai_unet.networks.UNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "features": [4, 8, 16],
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": ["image", "label"], "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
                {"_target_": "ScaleIntensityd", "keys": "image"},
                {
                    "_target_": "monai_unet.transforms.recommended_augmentations",
                    "keys": ["image", "label"],
                    "spatial_size": "@patch_size",
                },
                {"_target_": "Lambdad", "keys": "label", "func": "$lambda x: (x == 0).float()"},
                *(weight if weighted else []),
                crop,
            ],
        },
        "loss": (
            {"_target_": "monai_unet.losses.WeightedCrossEntropyLoss"}
            if weighted
            else {"_target_": "DiceFocalLoss", "to_onehot_y": True, "softmax": True}
        ),
        # train-time metrics see the label without its weight channel
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                *([{"_target_": "Lambdad", "keys": "label", "func": "$lambda x: x[:1]"}] if weighted else []),
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
            ],
        },
        "datalist": [
            {"image": f"{data_dir}/images/train_0{i}.png", "label": f"{data_dir}/labels/train_0{i}.png"} for i in (0, 1)
        ],
    }


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted_ce", "dice_focal"])
def test_bundle_config_trains_with_supervised_trainer(shared_data, weighted):
    torch.manual_seed(0)
    parser = ConfigParser(bundle_config(str(shared_data / "isbi2012"), weighted))
    net = parser.get_parsed_content("network_def")
    transform = parser.get_parsed_content("preprocessing")
    transform.set_random_state(0)
    sample = transform(parser.get_parsed_content("datalist")[0])
    assert sample["image"].shape == (1, PATCH, PATCH)
    assert sample["label"].shape == (2 if weighted else 1, 28, 28)  # class index (+ weight), cropped to the output
    assert set(torch.unique(sample["label"][0]).tolist()) <= {0.0, 1.0}
    if weighted:
        assert sample["label"][1].min() > 0
    loader = DataLoader(Dataset(parser.get_parsed_content("datalist"), transform), batch_size=2)
    before = [p.detach().clone() for p in net.parameters()]
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99),
        loss_function=parser.get_parsed_content("loss"),
        postprocessing=parser.get_parsed_content("postprocessing"),
        key_train_metric={"train_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    trainer.run()
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the train Dice (one batch per epoch) is that of the last batch's class label, the weight channel left out
    preds, labels = from_engine(["pred", "label"])(trainer.state.output)
    for label in labels:
        assert label.shape == (2, 28, 28) and torch.equal(label.sum(0), torch.ones(28, 28))  # one-hot classes
    expected = DiceMetric(include_background=True)(preds, labels).mean().item()
    assert trainer.state.metrics["train_dice"] == pytest.approx(expected, abs=1e-6)


def blob_data(n: int, size: int = PATCH) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for _ in range(n):
        cell = ndi.gaussian_filter(rng.random((size, size)), 3) > 0.5
        image = cell + 0.3 * rng.standard_normal(cell.shape)
        items.append(
            {
                "image": torch.as_tensor(image[None], dtype=torch.float32),
                "label": torch.as_tensor(~cell[None], dtype=torch.float32),  # "membrane" = class 1
            }
        )
    return items


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted_ce", "dice_focal"])
def test_supervised_trainer_loss_falls(weighted):
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, features=(4, 8, 16), dropout=0.0)
    steps = [BorderWeightMapd(keys="label", weight_keys="weight", foreground=0)] if weighted else []
    steps += [ConcatItemsd(keys=["label", "weight"], name="label")] if weighted else []
    steps += [CenterSpatialCropd(keys="label", roi_size=net.output_size(PATCH))]
    data = [Compose(steps)(item) for item in blob_data(2)]
    loss_fn = WeightedCrossEntropyLoss() if weighted else DiceFocalLoss(to_onehot_y=True, softmax=True)
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=12,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        loss_function=loss_fn,
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output)))
    )
    trainer.run()
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses


def test_evaluator_reports_isbi_metrics():
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, features=(4, 8, 16), dropout=0.0).eval()
    crop = CenterSpatialCropd(keys="label", roi_size=net.output_size(PATCH))
    data = [crop(item) for item in blob_data(3)]
    post = Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=2), AsDiscreted(keys="label", to_onehot=2)])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=2),
        network=net,
        postprocessing=post,
        key_val_metric={"val_rand_error": RandError(output_transform=from_engine(["pred", "label"]))},
        additional_metrics={
            "val_pixel_error": PixelError(output_transform=from_engine(["pred", "label"])),
            "val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"])),
        },
        metric_cmp_fn=lambda current, best: current < best,
    )
    evaluator.run()
    metrics = evaluator.state.metrics
    assert set(metrics) == {"val_rand_error", "val_pixel_error", "val_mean_dice"}
    assert evaluator.state.best_metric == metrics["val_rand_error"]
    # each reported value is the mean over the 3 images (in 2 batches) of the metric of that image alone
    with torch.no_grad():
        preds = [net(item["image"][None]).argmax(1, keepdim=True) for item in data]
    labels = [item["label"][None] for item in data]
    for name, fn in (("val_pixel_error", compute_pixel_error), ("val_rand_error", compute_rand_error)):
        per_image = [fn(p, t).item() for p, t in zip(preds, labels)]
        details = evaluator.state.metric_details[name].flatten().tolist()
        assert details == pytest.approx(per_image, abs=1e-6)
        assert metrics[name] == pytest.approx(np.mean(per_image), abs=1e-6)
    pixel = [(p != t).float().mean().item() for p, t in zip(preds, labels)]  # by hand, for one of them
    assert metrics["val_pixel_error"] == pytest.approx(np.mean(pixel), abs=1e-6)
