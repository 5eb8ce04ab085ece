"""Helpers shared by the export tests: narrow seeded checkpoints, ``monai-unet export`` through its own parser."""

from __future__ import annotations

from pathlib import Path

import torch

# narrow networks keep the tests fast; the bundles' configs are used with only `features` overridden
FEATURES = {"unet2d_membrane": [4, 8, 16, 32, 64], "unet3d_volume": [4, 8, 16]}
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "all_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}


def make_checkpoint(bundle: str, path: Path, seed: int = 0) -> Path:
    """The bundle's ``network_def`` (narrow features) with seeded He-initialised weights, saved as training saves
    ``models/model.pt`` (a state dict)."""
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    parser = ConfigParser()
    parser.read_config(str(bundle_config(find_bundle(bundle), "inference")))
    parser["features"] = FEATURES[bundle]
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def export(bundle: str, checkpoint: Path, output: Path, *extra: str) -> int:
    """``monai-unet export`` through this package's own parser (as monai_unet.cli wires it)."""
    import argparse

    from monai_unet.export.cli import add_export_parser

    parser = argparse.ArgumentParser(prog="monai-unet")
    add_export_parser(parser.add_subparsers())
    features = str(FEATURES[bundle]).replace(" ", "")
    argv = ["export", "--bundle", bundle, "--checkpoint", str(checkpoint), "--output", str(output)]
    args = parser.parse_args([*argv, "--format", "bioimageio", "--set", f"features={features}", *extra])
    return args.func(args)
