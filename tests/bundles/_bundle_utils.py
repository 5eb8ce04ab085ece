"""Helpers of the bundle tests: where the bundles are, and running ``python -m monai.bundle`` as users type it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"


def bundle_cmd(bundle: str, *args: str, configs: tuple[str, ...] = ("train",)) -> list[str]:
    """``python -m monai.bundle <args> --meta_file ... --config_file ... --logging_file ...`` for a bundle."""
    cfg = BUNDLES / bundle / "configs"
    files = [str(cfg / f"{c}.json") for c in configs]
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        *args,
        "--meta_file",
        str(cfg / "metadata.json"),
        "--config_file",
        config_file,
        "--logging_file",
        str(cfg / "logging.conf"),
    ]


def run_cmd(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command with a few threads, fail the test with its output when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
