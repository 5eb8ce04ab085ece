"""Narrow seeded checkpoints of both bundles and their bioimage.io packages, shared by the export tests.

bioimage.io's libraries are kept offline: their cache goes to a temporary folder (set before they are imported), and
the tests that run them route HTTP(S) through a closed local port, so any download attempt fails instead of passing
unnoticed on a machine with internet access.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from export_helpers import FEATURES, OFFLINE, export, make_checkpoint

os.environ.setdefault("BIOIMAGEIO_CACHE_PATH", tempfile.mkdtemp(prefix="bioimageio-cache-"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No network for this test (HTTP(S) through a closed port); returns the environment for subprocesses."""
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def checkpoints(export_dir: Path) -> dict[str, Path]:
    return {b: make_checkpoint(b, export_dir / f"{b}.pt") for b in FEATURES}


@pytest.fixture(scope="session")
def package_2d(export_dir: Path, checkpoints: dict[str, Path]) -> Path:
    """The 2D bundle's package as ``monai-unet export`` writes it by default (``offset`` declaration)."""
    out = export_dir / "unet2d.zip"
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out) == 0
    return out


@pytest.fixture(scope="session")
def package_2d_halo(export_dir: Path, checkpoints: dict[str, Path]) -> Path:
    """The 2D bundle's package with the ``halo`` declaration (what bioimageio.core tiles)."""
    out = export_dir / "unet2d_halo.zip"
    assert export("unet2d_membrane", checkpoints["unet2d_membrane"], out, "--size-declaration", "halo") == 0
    return out
