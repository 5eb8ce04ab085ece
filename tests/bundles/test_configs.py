"""Every bundle config parses and builds; inference and training agree; metadata matches the size rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _bundle_utils import BUNDLES
from monai.bundle import ConfigParser
from monai.bundle.scripts import _get_fake_spatial_shape
from monai.data import MetaTensor

from monai_unet.networks import UNet

BUNDLE_NAMES = ["unet2d_membrane", "unet3d_volume"]
REQUIRED_FILES = [
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
]


def _parser(bundle: str, *configs: str, **overrides) -> ConfigParser:
    cfg = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / f"{c}.json") for c in configs])
    parser.read_meta(str(cfg / "metadata.json"))
    for k, v in overrides.items():
        parser[k] = v
    return parser


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_layout(bundle: str) -> None:
    for rel in REQUIRED_FILES:
        assert (BUNDLES / bundle / rel).is_file(), f"{bundle} lacks {rel}"


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_run_and_training_ids(bundle: str) -> None:
    train = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    assert train["run"] == train["training"]
    assert "train" in train and "trainer" in train["train"] and "evaluator" in train["validate"]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_inference_network_equals_training_network(bundle: str) -> None:
    train = _parser(bundle, "train")
    infer = _parser(bundle, "inference")
    assert train.get("network_def") == infer.get("network_def")
    for key in ("features", "infer_tile_size"):
        assert train.get(key) == infer.get(key)
    a, b = train.get_parsed_content("network_def"), infer.get_parsed_content("network_def")
    assert isinstance(a, UNet) and isinstance(b, UNet)
    assert a.features == b.features and a.padding == b.padding and a.spatial_dims == b.spatial_dims


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_spatial_shape_follows_size_rules(bundle: str) -> None:
    parser = _parser(bundle, "inference")
    meta = parser.get("_meta_")
    assert meta["description"] and meta["version"]
    fmt = meta["network_data_format"]
    net = parser.get_parsed_content("network_def")
    assert fmt["inputs"]["image"]["num_channels"] == net.in_channels
    assert len(fmt["outputs"]["pred"]["channel_def"]) == net.out_channels
    for n in range(1, 6):
        shape_in = _get_fake_spatial_shape(fmt["inputs"]["image"]["spatial_shape"], n=n)
        shape_out = _get_fake_spatial_shape(fmt["outputs"]["pred"]["spatial_shape"], n=n)
        assert net.is_valid_size(shape_in), (n, shape_in)
        assert net.output_size(shape_in) == shape_out
        with torch.no_grad():
            if n == 1:
                assert net.eval()(torch.zeros(1, 1, *shape_in)).shape[2:] == shape_out


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_and_evaluate_configs_build(bundle: str, tiny_em: Path, tiny_volumes: Path, tmp_path: Path) -> None:
    """train.json and train.json + evaluate.json build every component on a small dataset (no ambiguous target)."""
    data = tiny_em if bundle.startswith("unet2d") else tiny_volumes
    parser = _parser(bundle, "train", bundle_root=str(tmp_path), dataset_dir=str(data), num_workers=0)
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert trainer.state.max_epochs == parser.get("max_epochs")
    assert evaluator.data_loader is not None
    tile = parser.get_parsed_content("tile_size")
    net = parser.get_parsed_content("network_def")
    assert net.is_valid_size(tile) and tuple(parser.get_parsed_content("output_size")) == net.output_size(tile)
    # one training sample: the image is a tile, the label (and weight) are cropped to the network output
    sample = parser.get_parsed_content("train#dataset")[0]
    sample = sample[0] if isinstance(sample, list) else sample
    assert tuple(sample["image"].shape[1:]) == tuple(tile)
    assert tuple(sample["label"].shape[1:]) == net.output_size(tile)
    assert set(np.unique(sample["label"][0].numpy())) <= {0.0, 1.0}
    assert sample["label"].shape[0] == (2 if bundle.startswith("unet2d") else 1)  # the 2D label carries its weights
    ev = _parser(bundle, "train", "evaluate", bundle_root=str(tmp_path), dataset_dir=str(data), num_workers=0)
    ev.get_parsed_content("validate#evaluator")
    # evaluate.json keeps the images' metadata (MetricsSaver names each image's row by its file)
    assert isinstance(ev.get_parsed_content("validate#dataset")[0]["image"], MetaTensor)
    assert not isinstance(parser.get_parsed_content("validate#dataset")[0]["image"], MetaTensor)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_inference_config_builds(bundle: str, tmp_path: Path) -> None:
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Compose

    from monai_unet.inferers import OverlapTileInferer

    parser = _parser(bundle, "inference", bundle_root=str(tmp_path), datalist=[])
    expected = {
        "network": UNet,
        "preprocessing": Compose,
        "inferer": OverlapTileInferer,
        "postprocessing": Compose,
        "evaluator": SupervisedEvaluator,
    }
    for key, cls in expected.items():
        assert isinstance(parser.get_parsed_content(key), cls), key


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_targets_are_full_paths(bundle: str) -> None:
    """A bare "UNet" would silently resolve to MONAI's own UNet; our components are named by full path."""
    for path in (BUNDLES / bundle / "configs").glob("*.json"):
        text = path.read_text()
        assert '"_target_": "UNet"' not in text and '"_target_": "OverlapTileInferer"' not in text, path


@pytest.mark.parametrize("configs", [("train",), ("train", "isbi2012")])
def test_border_weight_keys_reach_the_weight_map(configs: tuple[str, ...], tiny_em: Path, tmp_path: Path) -> None:
    """``class_balance``, ``border_w0`` and ``border_sigma`` (the 2D recipe's loss weights) configure the weight map."""
    from monai_unet.transforms import BorderWeightMap, BorderWeightMapd

    def weight_map(**overrides) -> BorderWeightMap:
        parser = _parser("unet2d_membrane", *configs, bundle_root=str(tmp_path), dataset_dir=str(tiny_em), **overrides)
        transforms = parser.get_parsed_content("train#deterministic_transforms")
        found = [t for t in transforms if isinstance(t, BorderWeightMapd)]
        assert len(found) == 1
        return found[0].converter

    default = weight_map()
    recipe = json.loads((BUNDLES / "unet2d_membrane" / "configs" / f"{configs[-1]}.json").read_text())
    train = json.loads((BUNDLES / "unet2d_membrane" / "configs" / "train.json").read_text())
    for attr, key in (("w0", "border_w0"), ("sigma", "border_sigma"), ("class_balance", "class_balance")):
        assert getattr(default, attr) == recipe.get(key, train[key])
    changed = weight_map(border_w0=3.0, border_sigma=2.0, class_balance=not default.class_balance)
    assert (changed.w0, changed.sigma, changed.class_balance) == (3.0, 2.0, not default.class_balance)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
@pytest.mark.parametrize("benchmark", [True, False])
def test_initialize_sets_cudnn_benchmark(bundle: str, benchmark: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``initialize`` leaves ``torch.backends.cudnn.benchmark`` as ``cudnn_benchmark`` says (on by default), after
    ``set_determinism`` turned it off; multi_gpu_train.json, which replaces ``initialize``, does the same."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    parser = _parser(bundle, "train", **({} if benchmark else {"cudnn_benchmark": False}))
    with torch.random.fork_rng():
        parser.get_parsed_content("initialize")
    assert torch.backends.cudnn.benchmark is benchmark
    train = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    multi = json.loads((BUNDLES / bundle / "configs" / "multi_gpu_train.json").read_text())
    assert set(train["initialize"]) <= set(multi["initialize"])


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_loss_is_logged_by_rank_0_only(
    bundle: str, tiny_em: Path, tiny_volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ranks > 0 of a distributed run (``is_not_rank0``, the id MONAI's MLflow tracking also uses) the
    train-loss console and TensorBoard handlers are left out, and nothing else."""
    import torch.distributed as dist

    data = tiny_em if bundle.startswith("unet2d") else tiny_volumes
    settings = {"bundle_root": str(tmp_path), "dataset_dir": str(data), "num_workers": 0}

    def handlers(rank: int | None) -> list[str]:
        monkeypatch.setattr(dist, "is_initialized", lambda: rank is not None)
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        parser = _parser(bundle, "train", **settings)
        return [type(h).__name__ for h in parser.get_parsed_content("train#handlers")]

    single, rank0, rank1 = handlers(None), handlers(0), handlers(1)
    assert single == rank0
    assert set(rank0) - set(rank1) == {"StatsHandler", "TensorBoardStatsHandler"}
    assert [h for h in rank0 if h in rank1] == rank1


def test_weight_map_off_trains_on_the_plain_label(tiny_em: Path, tmp_path: Path) -> None:
    """``use_weight_map: false`` (with a loss that takes a class label) leaves the weight map out of the pipeline."""
    from monai_unet.transforms import BorderWeightMapd

    parser = _parser(
        "unet2d_membrane",
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(tiny_em),
        num_workers=0,
        use_weight_map=False,
        loss={"_target_": "DiceFocalLoss", "to_onehot_y": True, "softmax": True},
    )
    transforms = parser.get_parsed_content("train#deterministic_transforms")
    assert not any(isinstance(t, BorderWeightMapd) for t in transforms)
    assert parser.get_parsed_content("train#spatial_keys") == ["image", "label"]
    sample = parser.get_parsed_content("train#dataset")[0]
    net = parser.get_parsed_content("network_def")
    assert tuple(sample["label"].shape) == (1, *net.output_size(parser.get_parsed_content("tile_size")))
