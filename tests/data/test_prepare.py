"""prepare_dataset and make_datalists, directly and as a bundle config calls them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_unet.data import load_image_kwargs, make_datalists, make_volume_dataset, prepare_dataset


def test_prepare_dataset_generates_synthetic_default_once(tmp_path):
    cache = tmp_path / "cache"
    options = {"num_images": 2, "size": 64}
    first = prepare_dataset(None, "membrane", cache, options)
    assert Path(first).parent == cache.resolve() and Path(first).name.startswith("synthetic_membrane_")
    assert len(list(Path(first, "images").glob("*.png"))) == 2
    stamp = Path(first, "images", "em_000.png").stat().st_mtime_ns
    for empty in ("", "null", "None"):
        assert prepare_dataset(empty, "membrane", cache, options) == first
    assert Path(first, "images", "em_000.png").stat().st_mtime_ns == stamp
    other = prepare_dataset(None, "membrane", cache, {"num_images": 3, "size": 64})
    assert other != first  # other settings, another folder: never a stale dataset


def test_prepare_dataset_real_folder_and_errors(tmp_path, shared_data):
    assert prepare_dataset(str(shared_data / "isbi2012"), "membrane", tmp_path) == str(
        (shared_data / "isbi2012").resolve()
    )
    assert not any(tmp_path.iterdir())  # nothing generated
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        prepare_dataset(tmp_path / "no_such_dataset", "volume", tmp_path)
    with pytest.raises(ValueError, match="kind"):
        prepare_dataset(None, "video", tmp_path)
    with pytest.raises(ValueError, match="kind"):
        load_image_kwargs("video")


def test_make_datalists_uses_validation_section(tmp_path):
    out = make_volume_dataset(tmp_path, num_volumes=3, shape=(16, 16, 8))
    meta = json.loads((out / "dataset.json").read_text())
    meta["validation"] = meta["training"][2:]
    meta["training"] = meta["training"][:2]
    (out / "dataset.json").write_text(json.dumps(meta))
    lists = make_datalists(out, "volume")
    assert [Path(it["image"]).name for it in lists["validation"]] == ["blob_002.nii.gz"]
    assert len(lists["training"]) == 2


CONFIG = {
    "imports": ["$import monai_unet", "$import monai_unet.data"],
    "dataset_dir": None,
    "cache_dir": None,
    "synthetic": {"num_images": 5, "size": 64},
    "data_root": "$monai_unet.data.prepare_dataset(@dataset_dir, 'membrane', @cache_dir, @synthetic)",
    "datalists": "$monai_unet.data.make_datalists(@data_root, 'membrane', val_fraction=0.2, cache_dir=@cache_dir)",
    "train_datalist": "$@datalists['training']",
    "val_datalist": "$@datalists['validation']",
}


def test_bundle_config_expressions(tmp_path, shared_data):
    parser = ConfigParser(dict(CONFIG, cache_dir=str(tmp_path)))
    assert len(parser.get_parsed_content("train_datalist")) == 4
    assert len(parser.get_parsed_content("val_datalist")) == 1
    assert "synthetic_membrane_" in parser.get_parsed_content("data_root")

    parser = ConfigParser(dict(CONFIG, cache_dir=str(tmp_path)))
    parser["dataset_dir"] = str(shared_data / "isbi2012")  # what --dataset_dir does
    assert len(parser.get_parsed_content("train_datalist")) == 16
    assert len(parser.get_parsed_content("val_datalist")) == 4
