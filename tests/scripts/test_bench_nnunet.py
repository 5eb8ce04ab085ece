"""scripts/bench_nnunet.py without nnU-Net: folds by patient, our results.json beside, the table, the budget.

Training nnU-Net is far too slow for CI (and CI does not install the ``bench`` extra); where nnunetv2 is installed,
the one test that needs it checks that nnU-Net finds the budgeted trainer through ``nnUNet_extTrainer``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_nnunet  # noqa: E402

BTP = "brain_tumor_progression_dicom"
PGBM1 = ("PGBM-001/11-19-1991-FH-HEADBrain Protocols-40993", "PGBM-001/04-02-1992-FH-HEADBrain Protocols-79896")
PGBM3 = ("PGBM-003/03-29-1995-Mr Rcbv Sequence-Fh-44184", "PGBM-003/10-17-1995-MR RCBV SEQUENCE-57198")


def test_folds_leave_one_patient_out_as_the_evaluation_script(shared_data: Path) -> None:
    folds = bench_nnunet.build_folds(None, None, [shared_data / BTP])
    assert len(folds) == 2
    for (train, test), held in zip(folds, (PGBM1, PGBM3)):
        assert sorted(bench_nnunet.study_key(s) for s in test) == sorted(held)
        assert len(train) == 2 and not {bench_nnunet.study_key(s) for s in train} & set(held)
    # ... and they are eval_brain_dicom.py's folds
    studies = bench_nnunet.eval_brain_dicom.find_studies([shared_data / BTP])
    assert [t for _, t in folds] == bench_nnunet.eval_brain_dicom.patient_folds(studies, None)


def test_train_and_test_folders_make_one_fold(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    assert bench_nnunet.build_folds([a, b], [c], None) == [([a.resolve(), b.resolve()], [c.resolve()])]
    with pytest.raises(SystemExit, match="go together"):
        bench_nnunet.build_folds([a], None, None)
    with pytest.raises(SystemExit, match="both --train and --test"):
        bench_nnunet.build_folds([a, b], [b], None)
    with pytest.raises(SystemExit, match="--data"):
        bench_nnunet.build_folds(None, None, None)


def our_results(tmp_path: Path) -> Path:
    """An eval_brain_dicom.py results.json: cross-validation by patient of the T1post set."""
    root = Path("/elsewhere/brain_tumor_progression_dicom")
    p1, p3 = [[str(root / s) for s in group] for group in (PGBM1, PGBM3)]
    folds = [
        {"train": p3, "studies": {s: {"dice": 0.5 + i / 10} for i, s in enumerate(p1)}},
        {"train": p1, "studies": {s: {"dice": 0.7 + i / 10} for i, s in enumerate(p3)}},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"sets": {"T1post": {"folds": folds, "mean_dice": 0.0}}}))
    return path


def test_our_dice_is_found_by_study_and_training_set(tmp_path: Path) -> None:
    index, note = bench_nnunet.read_ours(our_results(tmp_path), "T1post")
    assert note == ""
    here = Path("/data/btp")  # another machine's paths: studies match by patient/study folder
    assert bench_nnunet.ours_for(index, here / PGBM3[1], [here / s for s in PGBM1]) == (pytest.approx(0.8), "")
    # our model of that study was trained on other studies: still shown, but marked
    dice, note = bench_nnunet.ours_for(index, here / PGBM3[1], [here / PGBM1[0]])
    assert dice == pytest.approx(0.8) and "other studies" in note
    assert bench_nnunet.ours_for(index, here / "PGBM-009/x", []) == (None, "")
    index, note = bench_nnunet.read_ours(our_results(tmp_path), "T1post+FLAIR")
    assert index == {} and "no channel set 'T1post+FLAIR'" in note and "T1post" in note


def test_table_rows_means_and_an_honest_na(tmp_path: Path) -> None:
    index, _ = bench_nnunet.read_ours(our_results(tmp_path), "T1post")
    here = Path("/data/btp")
    fold = {
        "train": [str(here / s) for s in PGBM1],
        "test": [str(here / s) for s in PGBM3],
        "configurations": {
            "2d": {
                "training": {"iterations": 125, "train_seconds": 2700.0},
                "studies": {str(here / PGBM3[0]): {"dice": 0.6}, str(here / PGBM3[1]): {"dice": 0.4}},
            },
            "3d_fullres": {"reason": "no checkpoint (exit code 1)", "studies": {}},
        },
    }
    rows = bench_nnunet.table_rows([fold], index)
    assert [(r["configuration"], r["dice"], r["ours"]) for r in rows] == [
        ("2d", 0.6, pytest.approx(0.7)),
        ("2d", 0.4, pytest.approx(0.8)),
        ("3d_fullres", None, pytest.approx(0.7)),
        ("3d_fullres", None, pytest.approx(0.8)),
    ]
    m = bench_nnunet.means(rows)
    assert m["2d"]["dice"] == pytest.approx(0.5) and m["2d"]["ours"] == pytest.approx(0.75) and m["2d"]["n"] == 2
    # no Dice for a configuration: its mean is n/a, and ours is not averaged over studies nnU-Net has no score for
    assert m["3d_fullres"] == {"dice": None, "ours": None, "n": 0, "ours_n": 0, "of": 2}
    table = bench_nnunet.format_table(rows)
    assert f"| 0 | {PGBM3[0]} | 2d | 0.600 | 0.700 | 125 (0.50) | 45.0 min |" in table
    assert f"| 0 | {PGBM3[1]} | 3d_fullres | n/a | 0.800 | n/a | n/a | no checkpoint (exit code 1) |" in table
    assert "| 2d | 0.500 | 0.750 | 2 of 2 |" in table and "| 3d_fullres | n/a | n/a | 0 of 2 |" in table


@pytest.mark.parametrize("schedule", bench_nnunet.SCHEDULES)
def test_learning_rate_starts_at_nnunets_and_decays(schedule: str) -> None:
    lr = bench_nnunet.learning_rate
    assert lr(schedule, 0, 0.0, 600.0, 0.01) == 0.01
    assert lr(schedule, 500, 300.0, 600.0, 0.01) < 0.01
    if schedule == "nnunet":  # nnU-Net's per-epoch poly: constant within its 250-iteration epochs, 1000 epochs
        assert lr(schedule, 249, 599.0, 600.0, 0.01) == 0.01
        assert lr(schedule, 250, 0.0, 600.0, 0.01) == pytest.approx(0.01 * (1 - 1 / 1000) ** 0.9)
    else:  # the same decay over the wall-clock budget: half the budget, 0.5 ** 0.9 of the rate; nothing after it
        assert lr(schedule, 0, 300.0, 600.0, 0.01) == pytest.approx(0.01 * 0.5**0.9)
        assert lr(schedule, 10**6, 700.0, 600.0, 0.01) == 0.0
    with pytest.raises(ValueError, match="cosine"):
        lr("cosine", 0, 0.0, 1.0, 0.01)


def test_a_run_past_its_limit_is_stopped(tmp_path: Path) -> None:
    """The training budget is enforced from outside too: the process group is interrupted, then killed."""
    log = tmp_path / "log.txt"
    child = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    start = time.perf_counter()
    code, stopped = bench_nnunet.run_until([sys.executable, "-c", child], os.environ, log, limit_s=2.0, escalate_s=1.0)
    assert stopped and code == -signal.SIGTERM and time.perf_counter() - start < 30  # SIGINT ignored: SIGTERM ended it
    assert "up" in log.read_text()
    code, stopped = bench_nnunet.run_until([sys.executable, "-c", "print('done')"], os.environ, log, limit_s=30.0)
    assert (code, stopped) == (0, False)


def test_cli_refuses_bad_arguments_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--budget-min"):
        bench_nnunet.main(["--data", str(tmp_path), "--budget-min", "0"])
    with pytest.raises(SystemExit, match="--channels"):
        bench_nnunet.main(["--data", str(tmp_path), "--channels", "PD"])
    with pytest.raises(SystemExit, match="no study folder"):
        bench_nnunet.main(["--data", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    with pytest.raises(SystemExit):  # argparse: not a configuration nnU-Net has
        bench_nnunet.main(["--data", str(tmp_path), "--configurations", "3d"])


def test_nnunet_finds_the_budgeted_trainer(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")  # the bench extra; CI does not install it
    folder = tmp_path / "trainers"
    bench_nnunet.write_trainer_module(folder)
    code = (
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        f"cls = find({bench_nnunet.TRAINER!r})\n"
        "assert issubclass(cls, nnUNetTrainer) and cls.run_training is not nnUNetTrainer.run_training\n"
        "print(cls.__name__)\n"
    )
    env = {**os.environ, "nnUNet_extTrainer": str(folder)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == bench_nnunet.TRAINER
