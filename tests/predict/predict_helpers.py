"""Helpers shared by the predict tests: narrow random-weight checkpoints and synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# narrow networks keep the tests fast; the bundles' own configs are used with only `features` overridden
FEATURES = {"unet2d_membrane": [4, 8, 16, 32, 64], "unet3d_volume": [4, 8, 16]}


def make_checkpoint(bundle: str, path: Path) -> Path:
    """Save the bundle's ``network_def`` (narrow features) with seeded random weights to ``path``."""
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    parser = ConfigParser()
    parser.read_config(str(bundle_config(find_bundle(bundle), "inference")))
    parser["features"] = FEATURES[bundle]
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), path)
    return path


def smooth_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth random int16 volume (something for the network to see)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return (gaussian_filter(rng.normal(size=shape), 2) * 3000).astype(np.int16)


def oblique_affine() -> np.ndarray:
    """An oblique RAS affine with anisotropic spacing (1.1, 0.9, 2.5 mm)."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [12, -7, 20], degrees=True).as_matrix()
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.1, 0.9, 2.5])
    aff[:3, 3] = [-40.5, 12.25, 7.0]
    return aff
