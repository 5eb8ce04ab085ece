"""Training the 3D bundle from a plan, as users run it: ``monai-unet train --config PLAN.json`` and
``python -m monai.bundle run training --config_file "['configs/train.json','PLAN.json']"``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from _bundle_utils import BUNDLES, bundle_cmd, run_cmd
from monai.bundle import ConfigParser

from monai_unet.cli import main
from monai_unet.planning import PlanOptions, make_plan, write_plan

pytestmark = pytest.mark.slow
CONFIGS = BUNDLES / "unet3d_volume" / "configs"


def _weights_fit(root: Path, plan: Path, iterations: int) -> None:
    """The run went through ``iterations`` and its validated weights load into inference.json + the plan."""
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=False)
    assert state["trainer"]["iteration"] == iterations
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(plan)])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))


@pytest.mark.parametrize("deep_supervision", [0, 1])
def test_monai_unet_train_with_a_plan(tiny_volumes: Path, tmp_path: Path, deep_supervision: int) -> None:
    """With deep supervision the trainer scores the extra output too, and the weights (heads included) load into
    the inference network, which gives the top output alone."""
    options = PlanOptions.for_device("cpu", memory_mb=300, deep_supervision=deep_supervision)
    plan = make_plan("unet3d_volume", tiny_volumes, options, measure=False)
    assert plan["deep_supervision"] == deep_supervision
    path = write_plan(plan, tmp_path / "PLAN.json")
    work = tmp_path / "run"
    argv = ["train", "--bundle", "unet3d_volume", "--dataset-dir", str(tiny_volumes), "--config", str(path)]
    argv += ["--work-dir", str(work), "--set", "max_epochs=1", "epoch_length=2", "val_interval=1", "num_workers=0"]
    assert main(argv) == 0
    _weights_fit(work, path, iterations=2)


def test_bundle_trains_from_the_committed_brain_plan(shared_data: Path, tmp_path: Path) -> None:
    """configs/brain_tumor_progression.json merged over train.json, on the real DICOM studies."""
    cmd = bundle_cmd("unet3d_volume", "run", "training", configs=("train", "brain_tumor_progression"))
    cmd += ["--bundle_root", str(tmp_path), "--dataset_dir", str(shared_data / "brain_tumor_progression_dicom")]
    cmd += ["--max_epochs", "1", "--epoch_length", "2", "--val_interval", "1", "--num_workers", "0"]
    proc = run_cmd(cmd, cwd=CONFIGS.parent)
    dice = re.findall(r"Metrics -- val_mean_dice: (\S+)", proc.stdout + proc.stderr)
    assert dice and math.isfinite(float(dice[-1]))  # the held-out study's mask was read onto its image
    _weights_fit(tmp_path, CONFIGS / "brain_tumor_progression.json", iterations=2)
