"""Fixtures of the planning tests: small synthetic NIfTI datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from _plan_data import write_case


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Three single-channel 3D cases of different sizes, spacing 1 x 1 x 4 mm (one at 0.8 mm in-plane)."""
    root = tmp_path / "tiny"
    write_case(root, "case_a", (40, 36, 12), seed=1)
    write_case(root, "case_b", (44, 40, 13), seed=2)
    write_case(root, "case_c", (50, 45, 12), spacing=(0.8, 0.8, 4.0), seed=3)
    return root
