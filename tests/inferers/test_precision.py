"""Mixed-precision and int8 inference: float32 out, tiled equals whole image within the precision's rounding; "auto"
runs a narrow type only where a precision check of the model on this device family met the goal."""

from __future__ import annotations

import pytest
import torch

from monai_unet.inferers import OverlapTileInferer, resolve_precision
from monai_unet.inferers import precision as prec
from monai_unet.networks import UNet


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, 2, features=(8, 16, 32), dropout=0).eval()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_tiled_equals_whole_within_rounding(net: UNet, precision: str) -> None:
    x = torch.randn(1, 1, 90, 77)
    whole32 = OverlapTileInferer(tile_size=net.input_size((90, 77)))(x, net)
    whole = OverlapTileInferer(tile_size=net.input_size((90, 77)), precision=precision)(x, net)
    tiled = OverlapTileInferer(tile_size=net.valid_sizes(80)[-1], precision=precision)(x, net)
    assert whole.dtype == tiled.dtype == torch.float32
    # tiling changes nothing but the order of the same narrow-type operations
    torch.testing.assert_close(tiled, whole, atol=2e-2, rtol=2e-2)
    err = (whole - whole32).abs().max().item()
    assert 0 < err < 0.1, err  # it did compute in the narrow type, and stayed close to fp32
    probs = OverlapTileInferer(tile_size=net.valid_sizes(80)[-1], precision=precision, tta=True)(x, net)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5, rtol=1e-5)


def _check(**bf16: float) -> list[dict]:
    """A precision check of this CPU's family with one bf16 measurement."""
    return [prec.check_entry({"bf16": {"speedup": 2.0, "labels_changed": 1e-4, "metric_change": 1e-4, **bf16}}, "cpu")]


def test_auto_picks_bf16_only_where_a_check_of_this_cpu_family_met_the_goal(monkeypatch) -> None:
    monkeypatch.setattr(prec, "cpu_computes_bf16", lambda: False)
    picked, why = resolve_precision("auto", "cpu", _check())
    assert picked == "fp32" and "no native bfloat16" in why
    monkeypatch.setattr(prec, "cpu_computes_bf16", lambda: True)
    picked, why = resolve_precision("auto", "cpu")  # native bf16, but nobody measured this model: fp32
    assert picked == "fp32" and "no precision check" in why and "--write-check" in why
    picked, why = resolve_precision("auto", "cpu", _check())
    assert picked == "bf16" and "2.00x" in why and "met" in why
    # each part of the goal can fail it: too slow, too many labels changed, a metric moved
    for bad in ({"speedup": 1.5}, {"labels_changed": 2e-3}, {"metric_change": 1e-3}):
        picked, why = resolve_precision("auto", "cpu", _check(**bad))
        assert picked == "fp32" and "not met" in why, bad
    # the numbers decide, not a stored flag; and a check of another CPU family says nothing about this one
    forged = _check(speedup=1.2)
    forged[0]["precisions"]["bf16"]["passed"] = True
    assert resolve_precision("auto", "cpu", forged)[0] == "fp32"
    other = _check()
    other[0]["device_family"] = "cpu GenuineIntel amx_bf16" if "amx" not in prec.device_family("cpu") else "cpu X"
    picked, why = resolve_precision("auto", "cpu", other)
    assert picked == "fp32" and prec.device_family("cpu") in why
    assert resolve_precision("fp16", "cpu") == ("fp16", "as asked")


def test_auto_without_a_check_runs_fp32_and_says_so(net: UNet, monkeypatch, caplog) -> None:
    monkeypatch.setattr(prec, "cpu_computes_bf16", lambda: True)
    x = torch.randn(1, 1, 60, 50)
    tile = net.valid_sizes(80)[-1]
    with caplog.at_level("INFO", logger=prec.__name__):
        auto = OverlapTileInferer(tile_size=tile, precision="auto")(x, net)
    assert torch.equal(auto, OverlapTileInferer(tile_size=tile)(x, net))
    assert "precision fp32" in caplog.text and "no precision check" in caplog.text
    with prec.autocast_for("auto", "cpu", _check()) as picked:
        assert picked == "bf16" and torch.is_autocast_enabled("cpu")
    # the inferer passes the model's check on (the bundles' inference.json "precision_check", from an overlay)
    checked = OverlapTileInferer(tile_size=tile, precision="auto", precision_check=_check())(x, net)
    torch.testing.assert_close(checked, OverlapTileInferer(tile_size=tile, precision="bf16")(x, net))
    assert not torch.equal(checked, auto)


def test_bundle_overlay_carries_the_precision_check(tmp_path) -> None:
    """``--config`` with a ``precision_check`` reaches the bundle's inferer, which "auto" then reads."""
    import json

    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle
    from monai_unet.predict.runner import BundleRunner

    overlay = tmp_path / "check.json"
    overlay.write_text(json.dumps({"precision": "auto", "precision_check": _check(), "features": [2, 4]}))
    parser = ConfigParser()
    parser.read_config([str(bundle_config(find_bundle("unet2d_membrane"), "inference")), str(overlay)])
    weights = tmp_path / "w.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    runner = BundleRunner("unet2d_membrane", checkpoint=weights, device="cpu", overlays=[str(overlay)])
    assert runner.inferer.precision == "auto" and runner.inferer.precision_check == _check()


def test_bad_precision_is_named() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        OverlapTileInferer(precision="int4")


def test_timings_are_kept_apart_per_precision(net: UNet) -> None:
    from monai_unet.inferers import tile_choice as tc

    cpu = torch.device("cpu")
    plain = tc._speed_key(net, cpu, torch.float32, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        narrow = tc._speed_key(net, cpu, torch.float32, 1)
    assert plain != narrow


# ---- int8: ONNX Runtime static quantisation -------------------------------------------------------------------


def _smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``(1, 1, *shape)`` noise blurred by average pooling: image-like, not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, *(s + 4 for s in shape)), generator=g)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    return pool(x, 5, stride=1) * 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_int8_tiles_exactly_and_mostly_agrees_with_fp32(spatial_dims: int, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from monai_unet.inferers.quantize import OnnxTileNetwork, TileRecorder, quantize_network

    torch.manual_seed(0)
    # batch norm (eval): per-pixel like the convolutions, so tiling is exact (instance norm is per tile)
    net = UNet(spatial_dims, 1, 2, features=(4, 8, 16), dropout=0, norm="batch").eval()
    shape = (90, 77) if spatial_dims == 2 else (20, 18, 17)
    tile = net.valid_sizes(80 if spatial_dims == 2 else 52)[-1]  # 2 x 2 (x 2) tiles
    recorder = TileRecorder(net, limit=8)
    inferer = OverlapTileInferer(tile_size=tile)
    inferer(torch.cat([_smooth(shape, 1), _smooth(shape, 2)]), recorder)
    # the tiles the inferer cut: one valid size, at most the tile asked for, one channel
    sizes = {tuple(t.shape) for t in recorder.tiles}
    assert len(recorder.tiles) == 8 < recorder.seen and len(sizes) == 1  # a sample of them
    size = sizes.pop()
    assert size[0] == 1 and net.is_valid_size(size[1:]) and max(size[1:]) <= tile
    q = OnnxTileNetwork(quantize_network(net, recorder.tiles, tmp_path / "int8.onnx"), like=net)

    x = _smooth(shape, 3)
    with torch.no_grad():
        fp32 = inferer(x, net)
    tiled = inferer(x, q)
    whole = OverlapTileInferer(tile_size=net.input_size(shape))(x, q)
    assert tiled.shape == fp32.shape and tiled.dtype == torch.float32
    # fixed scales: a pixel's int8 value depends on its input window only, as in float
    torch.testing.assert_close(tiled, whole, atol=1e-4 * float(whole.abs().max()), rtol=1e-4)
    assert 0 < (tiled - fp32).abs().max() < 0.5 * fp32.abs().max()  # it is quantised, and close
    agree = (tiled.argmax(1) == fp32.argmax(1)).float().mean()
    assert agree > 0.9


def test_int8_without_onnxruntime_names_the_extra(monkeypatch) -> None:
    import sys

    from monai_unet.inferers import quantize

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"monai-unet\[int8\]"):
        quantize.OnnxTileNetwork("missing.onnx")
