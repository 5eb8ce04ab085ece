"""Mixed-precision inference: float32 out, tiled equals whole image within the precision's rounding."""

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


def test_auto_says_what_it_picks(monkeypatch) -> None:
    monkeypatch.setattr(prec, "cpu_computes_bf16", lambda: True)
    assert resolve_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(prec, "cpu_computes_bf16", lambda: False)
    picked, why = resolve_precision("auto", "cpu")
    assert picked == "fp32" and "no native bfloat16" in why
    assert resolve_precision("fp16", "cpu") == ("fp16", "as asked")


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
