"""nnU-Net v2 on the folds of scripts/eval_brain_dicom.py, under the same wall-clock budget, its Dice beside ours.

For each fold (``--train S1 S2 --test S3 S4``: one fold of the study folders given; ``--data D``: leave-one-patient-out
over the studies found below ``D``, the folds of ``eval_brain_dicom.py``):

1. the training studies become an nnU-Net raw dataset (``scripts/nnunet_raw.py``, ``--channels`` as there; one dataset
   id per fold: ``--dataset-id + k``) and the test studies another, for prediction only;
2. ``nnUNetv2_plan_and_preprocess`` (default planner, the ``--configurations`` only);
3. ``nnUNetv2_train DATASET CONFIG all -device cpu`` (nnU-Net's ``all`` fold: every training study) for each
   configuration, with the trainer ``nnUNetTrainerBench`` (below) that stops after the iteration that ends past
   ``--budget-min`` minutes of training, as our ``TimeLimit`` handler does; past the budget plus ``--grace-min`` the
   process group gets SIGINT, then SIGTERM, then SIGKILL, and its latest checkpoint is used all the same;
4. ``nnUNetv2_predict -chk checkpoint_latest.pth -device cpu`` on the test studies (nnU-Net's default inference:
   step 0.5, Gaussian weighting, mirroring unless ``--disable-tta``); the prediction lies on the first channel's grid,
   which is the study's DICOM grid, and is scored against the study's MaskTumor series exactly as
   ``eval_brain_dicom.py`` scores ours (``load_ras`` on both, ``dice`` voxel for voxel).

``nnUNetTrainerBench`` is nnU-Net's ``nnUNetTrainer`` (its plans, network, loss, data augmentation, SGD, batch
sampling) with a training loop that differs in three things only: it saves ``checkpoint_latest.pth`` after every
``--epoch-iterations`` iterations (nnU-Net's default saves every 50 epochs of 250 iterations: never, at CPU speed,
within a budget) and when the budget ends; it skips the per-epoch validation pass and the final validation (they only
pick ``checkpoint_best.pth`` and plot; nothing here uses them); and the learning rate follows ``--schedule``:
``nnunet`` = nnU-Net's own poly schedule over 1000 epochs of 250 iterations (what a default run does until it is
stopped), ``budget`` = the same poly decay sized to the wall-clock budget (as ours sizes its schedule). It is written to
``<work-dir>/trainers/`` and found through nnU-Net's ``nnUNet_extTrainer`` variable; nothing is written into the
installed package. nnU-Net v2 is the ``bench`` extra (``pip install "monai-unet[bench]"``), never a runtime dependency.

``--ours results.json`` (from ``eval_brain_dicom.py``) prints our Dice for the same study beside nnU-Net's, marked when
our model of that study was trained on other studies.

Usage:
    python scripts/bench_nnunet.py --data ../shared/data/brain_tumor_progression_dicom --ours runs/brain_cv/results.json
    python scripts/bench_nnunet.py --train S1 S2 --test S3 --channels T1post --configurations 2d --budget-min 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:  # the trainer module written for nnU-Net imports this file by name
    sys.path.insert(0, str(SCRIPTS))

import eval_brain_dicom  # noqa: E402

TRAINER = "nnUNetTrainerBench"
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
SCHEDULES = ("nnunet", "budget")
NNUNET_EPOCHS, NNUNET_EPOCH_ITERATIONS = 1000, 250  # nnUNetTrainer's defaults
ENV_BUDGET, ENV_EPOCH, ENV_SCHEDULE = "BENCH_NNUNET_BUDGET_S", "BENCH_NNUNET_EPOCH_ITERATIONS", "BENCH_NNUNET_SCHEDULE"
PROGRESS = "bench_progress.json"


# ----------------------------------------------------------------------------------------------------------- folds


def build_folds(
    train: Sequence[Path] | None, test: Sequence[Path] | None, data: Sequence[Path] | None
) -> list[tuple[list[Path], list[Path]]]:
    """``(training studies, test studies)`` per fold: the one fold given, or leave-one-patient-out below ``data``
    (``eval_brain_dicom.find_studies`` and ``patient_folds``, so the folds are the evaluation script's)."""
    if (train is None) != (test is None):
        raise SystemExit("--train and --test go together.")
    if train is not None:
        train_r, test_r = [Path(s).resolve() for s in train], [Path(s).resolve() for s in test]
        both = sorted(set(train_r) & set(test_r))
        if both:
            raise SystemExit(f"studies in both --train and --test: {[str(s) for s in both]}")
        return [(train_r, test_r)]
    if not data:
        raise SystemExit("give --train S1 ... --test S2 ... or --data FOLDER.")
    studies = eval_brain_dicom.find_studies([Path(d) for d in data])
    if not studies:
        raise SystemExit(f"no study folder (one with a {eval_brain_dicom.LABEL_SERIES} series) below {list(data)}.")
    return [([s for s in studies if s not in held], held) for held in eval_brain_dicom.patient_folds(studies, None)]


def study_key(study: str | os.PathLike) -> str:
    """``patient folder/study folder``: how a study is matched across machines and result files."""
    path = Path(study)
    return f"{path.parent.name}/{path.name}"


# ------------------------------------------------------------------------------------------------------------ ours


def read_ours(path: Path, tag: str) -> tuple[dict[str, list[dict]], str]:
    """Our per-study Dice for channel set ``tag`` from an ``eval_brain_dicom.py`` results.json
    (``results["sets"][tag]["folds"][k]["studies"][study]["dice"]``): study key -> ``[{dice, train}]``, and a note
    when the set is missing."""
    results = json.loads(path.read_text())
    sets = results.get("sets") or {}
    if tag not in sets:
        return {}, f"{path} has no channel set {tag!r} (it has {sorted(sets)})"
    index: dict[str, list[dict]] = {}
    for fold in sets[tag].get("folds") or []:
        train = sorted(study_key(s) for s in fold.get("train") or [])
        for study, scores in (fold.get("studies") or {}).items():
            index.setdefault(study_key(study), []).append({"dice": float(scores["dice"]), "train": train})
    return index, ""


def ours_for(index: Mapping[str, list[dict]], study: Path, train: Sequence[Path]) -> tuple[float | None, str]:
    """Our Dice of ``study``, preferring the run trained on the same studies; a note when there is none or when ours
    was trained on other studies."""
    entries = index.get(study_key(study), [])
    if not entries:
        return None, ""
    wanted = sorted(study_key(s) for s in train)
    same = [e for e in entries if e["train"] == wanted]
    return (same[0]["dice"], "") if same else (entries[0]["dice"], "ours trained on other studies")


# ----------------------------------------------------------------------------------------------------------- table


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows (fold, study, configuration, dice, ours, iterations, train_s, note) as a Markdown table, then the mean
    per configuration over the studies with a Dice (ours over the same studies)."""
    lines = [
        "| fold | study | configuration | Dice nnU-Net | Dice ours | iterations (nnU-Net epochs) | training | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        its = r.get("iterations")
        done = "n/a" if its is None else f"{its} ({its / NNUNET_EPOCH_ITERATIONS:.2f})"
        wall = "n/a" if r.get("train_s") is None else f"{r['train_s'] / 60:.1f} min"
        cells = [r["fold"], r["study"], r["configuration"], _num(r.get("dice")), _num(r.get("ours")), done, wall]
        lines.append("| " + " | ".join(str(c) for c in [*cells, r.get("note") or ""]) + " |")
    lines += [
        "",
        "| configuration | mean Dice nnU-Net | mean Dice ours (same studies) | studies scored |",
        "|---|---|---|---|",
    ]
    for configuration, m in means(rows).items():
        ours = _num(m["ours"]) + (f" ({m['ours_n']})" if m["ours"] is not None and m["ours_n"] != m["n"] else "")
        lines.append(f"| {configuration} | {_num(m['dice'])} | {ours} | {m['n']} of {m['of']} |")
    return "\n".join(lines)


def means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: mean nnU-Net Dice over the studies scored, ours over those of them we have."""
    out: dict[str, dict[str, Any]] = {}
    for configuration in dict.fromkeys(r["configuration"] for r in rows):
        mine = [r for r in rows if r["configuration"] == configuration]
        scored = [r for r in mine if r.get("dice") is not None]
        ours = [r["ours"] for r in scored if r.get("ours") is not None]
        out[configuration] = {
            "dice": sum(r["dice"] for r in scored) / len(scored) if scored else None,
            "ours": sum(ours) / len(ours) if ours else None,
            "n": len(scored),
            "ours_n": len(ours),
            "of": len(mine),
        }
    return out


# --------------------------------------------------------------------------------------------------- the trainer


def learning_rate(schedule: str, iterations: int, elapsed_s: float, budget_s: float, initial_lr: float) -> float:
    """The learning rate for the next iteration: nnU-Net's poly (exponent 0.9) stepped per epoch of 250 iterations
    over 1000 epochs (``nnunet``), or the same decay over the wall-clock budget (``budget``)."""
    if schedule == "nnunet":
        progress = (iterations // NNUNET_EPOCH_ITERATIONS) / NNUNET_EPOCHS
    elif schedule == "budget":
        progress = elapsed_s / budget_s if budget_s > 0 else 1.0
    else:
        raise ValueError(f"schedule {schedule!r}: use one of {SCHEDULES}.")
    return initial_lr * max(0.0, 1.0 - min(progress, 1.0)) ** 0.9


def trainer_class() -> type:
    """``nnUNetTrainerBench``: nnUNetTrainer with the budgeted loop described in the module docstring (settings from
    the environment: ``BENCH_NNUNET_BUDGET_S``, ``BENCH_NNUNET_EPOCH_ITERATIONS``, ``BENCH_NNUNET_SCHEDULE``)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerBench(nnUNetTrainer):
        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net records these arguments by name)
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.budget_s = float(os.environ.get(ENV_BUDGET, "inf"))
            self.num_iterations_per_epoch = int(os.environ.get(ENV_EPOCH, "25"))
            self.schedule = os.environ.get(ENV_SCHEDULE, "nnunet")
            self.num_epochs = NNUNET_EPOCHS * NNUNET_EPOCH_ITERATIONS // self.num_iterations_per_epoch

        def _save_latest(self, iterations: int, seconds: float, stopped: bool) -> None:
            latest = Path(self.output_folder) / "checkpoint_latest.pth"
            self.save_checkpoint(str(latest.with_suffix(".tmp")))  # a stop signal never leaves half a checkpoint
            os.replace(latest.with_suffix(".tmp"), latest)
            progress = {
                "iterations": iterations,
                "epochs": self.current_epoch + 1,
                "epoch_iterations": self.num_iterations_per_epoch,
                "train_seconds": round(seconds, 1),
                "stopped_by_budget": stopped,
                "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                "schedule": self.schedule,
                "budget_s": self.budget_s,
            }
            tmp = Path(self.output_folder) / (PROGRESS + ".tmp")
            tmp.write_text(json.dumps(progress, indent=2) + "\n")
            os.replace(tmp, Path(self.output_folder) / PROGRESS)

        def run_training(self) -> None:
            self.on_train_start()
            start, iterations, stopped = time.perf_counter(), 0, False
            while not stopped:
                self.on_train_epoch_start()
                outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    elapsed = time.perf_counter() - start
                    lr = learning_rate(self.schedule, iterations, elapsed, self.budget_s, self.initial_lr)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    iterations += 1
                    if time.perf_counter() - start >= self.budget_s:
                        stopped = True
                        break
                self.on_train_epoch_end(outputs)
                seconds = time.perf_counter() - start
                self._save_latest(iterations, seconds, stopped)
                self.print_to_log_file(
                    f"bench: epoch {self.current_epoch}, {iterations} iterations, {seconds:.0f} s, "
                    f"loss {float(self.logger.get_value('train_losses', step=-1)):.4f}, lr {lr:.5f}"
                )
                self.current_epoch += 1
            for loader in (self.dataloader_train, self.dataloader_val):
                if hasattr(loader, "_finish"):
                    loader._finish()
            self.print_to_log_file(f"bench: budget of {self.budget_s:.0f} s reached after {iterations} iterations")

        def perform_actual_validation(self, save_probabilities: bool = False) -> None:
            self.print_to_log_file("bench: no final validation (fold 'all' validates on its training cases)")

    return nnUNetTrainerBench


def write_trainer_module(folder: Path) -> Path:
    """The module nnU-Net imports from ``nnUNet_extTrainer``: it defines ``nnUNetTrainerBench`` from this script."""
    folder.mkdir(parents=True, exist_ok=True)
    module = folder / "bench_nnunet_trainer.py"
    module.write_text(
        '"""Written by scripts/bench_nnunet.py; nnU-Net finds its trainer here through nnUNet_extTrainer."""\n\n'
        f"import sys\n\nsys.path.insert(0, {str(SCRIPTS)!r})\n\n"
        f"from bench_nnunet import trainer_class  # noqa: E402\n\n{TRAINER} = trainer_class()\n"
    )
    return module


# ------------------------------------------------------------------------------------------------ running nnU-Net


def nnunet_command(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SystemExit(f'{name} not found: install nnU-Net v2 with pip install "monai-unet[bench]" (nnunetv2==2.8.1).')


def run_until(
    command: Sequence[str], env: Mapping[str, str], log: Path, limit_s: float, escalate_s: float = 30.0
) -> tuple[int, bool]:
    """Run ``command`` (output to ``log``) in its own process group; past ``limit_s`` seconds (or when this script is
    interrupted) the group gets SIGINT, then SIGTERM, then SIGKILL, ``escalate_s`` apart. Returns
    ``(return code, stopped here)``."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=limit_s), False
        except subprocess.TimeoutExpired:
            return _stop(process, escalate_s), True
        except BaseException:  # Ctrl-C reaches this script only (a new session): never leave nnU-Net running
            _stop(process, escalate_s)
            raise


def _stop(process: subprocess.Popen, escalate_s: float) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.wait(timeout=escalate_s)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def _tail(log: Path, chars: int = 600) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return " ".join(text[-chars:].split())


def train(env: Mapping[str, str], dataset: str, configuration: str, results: Path, log: Path, limit_s: float) -> dict:
    """Train one configuration on fold ``all``; what was done and the checkpoint to use (``None`` and a reason when
    there is none)."""
    output = results / dataset / f"{TRAINER}__nnUNetPlans__{configuration}" / "fold_all"
    shutil.rmtree(output, ignore_errors=True)  # never score a checkpoint of an earlier run
    command = [nnunet_command("nnUNetv2_train"), dataset, configuration, "all", "-tr", TRAINER, "-device", "cpu"]
    start = time.perf_counter()
    code, killed = run_until(command, env, log, limit_s)
    out: dict[str, Any] = {"wall_s": round(time.perf_counter() - start, 1), "return_code": code, "killed": killed}
    if (output / PROGRESS).is_file():
        out.update(json.loads((output / PROGRESS).read_text()))
    checkpoint = output / "checkpoint_latest.pth"
    out["checkpoint"] = str(checkpoint) if checkpoint.is_file() else None
    if out["checkpoint"] is None:
        why = f"stopped after {limit_s / 60:.0f} min" if killed else f"exit code {code}"
        out["reason"] = f"no checkpoint ({why}; log {log}): {_tail(log)}"
    elif killed:
        out["note"] = "killed past budget + grace; its latest checkpoint used"
    return out


def score(prediction: Path, study: Path) -> dict:
    """Dice of a predicted label map against the study's mask series, as ``eval_brain_dicom.py`` scores ours."""
    pred = eval_brain_dicom.load_ras(prediction) > 0
    true = eval_brain_dicom.load_ras(next(study.glob(eval_brain_dicom.LABEL_SERIES))) > 0
    if pred.shape != true.shape:
        return {"dice": None, "reason": f"prediction {pred.shape} and mask series {true.shape} not on one grid"}
    return {
        "dice": eval_brain_dicom.dice(pred, true),
        "dice_largest_component": eval_brain_dicom.dice(eval_brain_dicom.largest_component(pred), true),
        "predicted_voxels": int(pred.sum()),
        "mask_voxels": int(true.sum()),
        "prediction": str(prediction),
    }


def run_fold(args: argparse.Namespace, k: int, train_studies: list[Path], test: list[Path], tag: str) -> dict:
    """Convert, plan and preprocess, then train, predict and score each configuration of one fold."""
    import nnunet_raw

    slug = re.sub(r"[^A-Za-z0-9-]+", "-", tag)
    fold_dir = args.work_dir / slug / f"fold{k}"
    roots = {key: fold_dir / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for root in roots.values():
        root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **{key: str(path) for key, path in roots.items()},
        "nnUNet_extTrainer": str(args.work_dir / "trainers"),
        "nnUNet_compile": "false",
        "nnUNet_n_proc_DA": str(args.n_proc_da),
        "nnUNet_def_n_proc": str(args.num_processes),
        ENV_BUDGET: str(args.budget_min * 60.0),
        ENV_EPOCH: str(args.epoch_iterations),
        ENV_SCHEDULE: args.schedule,
    }
    dataset_id, name = args.dataset_id + k, f"Bench-{slug}"
    channels = nnunet_raw.parse_channels(args.channels)
    fold: dict[str, Any] = {"train": [str(s) for s in train_studies], "test": [str(s) for s in test], "timing": {}}
    print(
        f"\n[fold {k}] train {[study_key(s) for s in train_studies]}, test {[study_key(s) for s in test]}", flush=True
    )
    start = time.perf_counter()
    try:
        raw = nnunet_raw.convert(train_studies, roots["nnUNet_raw"], dataset_id, name, channels, overwrite=True)
        test_raw = nnunet_raw.convert(test, fold_dir / "test_raw", dataset_id, name, channels, overwrite=True)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    fold["timing"]["convert_s"] = round(time.perf_counter() - start, 1)
    fold["dataset"] = dataset = raw.name
    meta = json.loads((test_raw / "dataset.json").read_text())
    cases = {case: Path(sources["label"]).parent for case, sources in meta["sources"].items()}
    # the conversion's grid is the study's: its label, read as the prediction is, equals the mask series
    grid = {case: score(test_raw / "labelsTr" / f"{case}.nii.gz", study)["dice"] for case, study in cases.items()}
    fold["label_grid_check"] = grid
    if any(d != 1.0 for d in grid.values()):
        print(f"WARNING: converted test labels differ from their mask series (Dice {grid}): grids do not line up")
    print(f"[fold {k}] converted in {fold['timing']['convert_s']} s: {raw}", flush=True)

    log = fold_dir / "nnunet.log"
    log.write_text("")
    plan = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", *args.configurations]
    plan += ["-npfp", str(args.num_processes), "-np", str(args.num_processes), "--verify_dataset_integrity", "--clean"]
    start = time.perf_counter()
    code, killed = run_until([*plan, "--no_pbar"], env, log, args.step_timeout_min * 60)
    fold["timing"]["plan_preprocess_s"] = round(time.perf_counter() - start, 1)
    plans_path = roots["nnUNet_preprocessed"] / dataset / "nnUNetPlans.json"
    planned = json.loads(plans_path.read_text())["configurations"] if code == 0 and plans_path.is_file() else {}
    print(f"[fold {k}] planned and preprocessed in {fold['timing']['plan_preprocess_s']} s (log {log})", flush=True)

    fold["configurations"] = {}
    for configuration in args.configurations:
        entry: dict[str, Any] = {"studies": {}}
        fold["configurations"][configuration] = entry
        if configuration not in planned:
            entry["reason"] = (
                f"nnU-Net planned no {configuration} for this dataset" if planned else f"planning failed: {_tail(log)}"
            )
            continue
        entry["patch_size"] = planned[configuration].get("patch_size")
        entry["batch_size"] = planned[configuration].get("batch_size")
        train_log = fold_dir / f"train_{configuration}.log"
        train_log.write_text("")
        print(f"[fold {k}] {configuration}: training for {args.budget_min} min (log {train_log})", flush=True)
        limit = (args.budget_min + args.grace_min) * 60
        entry["training"] = train(env, dataset, configuration, roots["nnUNet_results"], train_log, limit)
        t = entry["training"]
        if t["checkpoint"] is None:
            entry["reason"] = t["reason"]
            print(f"[fold {k}] {configuration}: {entry['reason']}", flush=True)
            continue
        print(f"[fold {k}] {configuration}: {t.get('iterations')} iterations in {t.get('train_seconds')} s", flush=True)
        out = fold_dir / "predictions" / configuration
        shutil.rmtree(out, ignore_errors=True)
        predict = [nnunet_command("nnUNetv2_predict"), "-i", str(test_raw / "imagesTr"), "-o", str(out)]
        predict += ["-d", dataset, "-c", configuration, "-f", "all", "-tr", TRAINER, "-chk", "checkpoint_latest.pth"]
        predict += ["-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        predict += ["--disable_tta"] if args.disable_tta else []
        start = time.perf_counter()
        code, killed = run_until(predict, env, log, args.step_timeout_min * 60)
        entry["predict_s"] = round(time.perf_counter() - start, 1)
        for case, study in cases.items():
            prediction = out / f"{case}.nii.gz"
            if prediction.is_file():
                entry["studies"][str(study)] = score(prediction, study)
            else:
                why = f"stopped after {args.step_timeout_min} min" if killed else f"exit code {code}"
                entry["studies"][str(study)] = {"dice": None, "reason": f"no prediction ({why}): {_tail(log)}"}
    return fold


# ----------------------------------------------------------------------------------------------------------- main


def table_rows(folds: Sequence[Mapping[str, Any]], ours: Mapping[str, list[dict]]) -> list[dict]:
    """One row per fold, test study and configuration (a configuration without a checkpoint: one row per study, n/a)."""
    rows = []
    for k, fold in enumerate(folds):
        train_studies = [Path(s) for s in fold["train"]]
        for configuration, entry in fold["configurations"].items():
            training = entry.get("training") or {}
            for study in fold["test"]:
                result = entry["studies"].get(study) or {}
                theirs, note = ours_for(ours, Path(study), train_studies)
                reason = result.get("reason") or entry.get("reason") or training.get("note") or ""
                if result.get("predicted_voxels") == 0:
                    reason = "; ".join(n for n in (reason, "no tumour voxel predicted") if n)
                rows.append(
                    {
                        "fold": k,
                        "study": study_key(study),
                        "configuration": configuration,
                        "dice": result.get("dice"),
                        "ours": theirs,
                        "iterations": training.get("iterations"),
                        "train_s": training.get("train_seconds"),
                        "note": "; ".join(n for n in (reason[:160], note) if n),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=Path, nargs="+", default=None, help="training study folders (with --test)")
    p.add_argument("--test", type=Path, nargs="+", default=None, help="test study folders (with --train)")
    p.add_argument("--data", type=Path, nargs="+", default=None, help="folders of studies: leave-one-patient-out")
    p.add_argument("--channels", nargs="+", default=None, metavar="NAME[=PATTERN]", help="as in nnunet_raw.py")
    p.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=["3d_fullres", "2d"])
    p.add_argument("--budget-min", type=float, default=45.0, help="training wall clock per fold and configuration")
    p.add_argument("--grace-min", type=float, default=10.0, help="start-up allowance before the process is stopped")
    p.add_argument("--schedule", choices=SCHEDULES, default="nnunet", help="learning-rate schedule (see above)")
    p.add_argument("--epoch-iterations", type=int, default=25, help="iterations between checkpoints (default 25)")
    p.add_argument("--disable-tta", action="store_true", help="predict without nnU-Net's mirroring")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "nnunet_bench")
    p.add_argument("--dataset-id", type=int, default=600, help="nnU-Net dataset id of fold 0 (fold k: + k)")
    p.add_argument("--num-processes", type=int, default=min(2, os.cpu_count() or 1), help="planning processes")
    p.add_argument("--n-proc-da", type=int, default=1, help="nnU-Net's data augmentation processes")
    p.add_argument("--step-timeout-min", type=float, default=60.0, help="limit for planning and for prediction")
    p.add_argument("--ours", type=Path, default=None, help="an eval_brain_dicom.py results.json to print beside")
    p.add_argument("--json", type=Path, default=None, help="results (default <work-dir>/results.json)")
    args = p.parse_args(argv)
    if args.budget_min <= 0 or args.epoch_iterations < 1:
        raise SystemExit(f"--budget-min ({args.budget_min}) must be > 0 and --epoch-iterations >= 1.")
    args.configurations = list(dict.fromkeys(args.configurations))

    import nnunet_raw

    try:
        tag = "+".join(nnunet_raw.parse_channels(args.channels))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    folds = build_folds(args.train, args.test, args.data)
    ours, ours_note = read_ours(args.ours, tag) if args.ours else ({}, "")
    args.work_dir = args.work_dir.resolve()
    json_path = args.json or args.work_dir / "results.json"
    from importlib.metadata import PackageNotFoundError, version

    try:
        nn_version = version("nnunetv2")
    except PackageNotFoundError:
        raise SystemExit('nnU-Net v2 is not installed: pip install "monai-unet[bench]" (nnunetv2==2.8.1).') from None
    write_trainer_module(args.work_dir / "trainers")
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "nnunetv2": nn_version,
        "channels": tag,
        "configurations": args.configurations,
        "budget_s": args.budget_min * 60,
        "schedule": args.schedule,
        "epoch_iterations": args.epoch_iterations,
        "tta": not args.disable_tta,
        "ours": str(args.ours) if args.ours else None,
        "folds": [],
    }
    total = len(folds) * len(args.configurations) * args.budget_min
    print(f"nnU-Net v2 {nn_version}: {len(folds)} fold(s) x {args.configurations}, {total:g} min of training")
    for k, (train_studies, test) in enumerate(folds):
        report["folds"].append(run_fold(args, k, train_studies, test, tag))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    rows = table_rows(report["folds"], ours)
    report["means"] = means(rows)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nnnU-Net v2 {nn_version} ({tag}; {args.budget_min:g} min per model, schedule {args.schedule}) beside ours")
    print(format_table(rows))
    if ours_note:
        print(f"ours: {ours_note}")
    print(f"results: {json_path}")
    return 0 if all(m["dice"] is not None for m in report["means"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
