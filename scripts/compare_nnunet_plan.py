"""Compare our plan (``monai-unet plan``'s PLAN.json) with nnU-Net v2's default plan for the same data.

Converts the studies with ``scripts/nnunet_raw.py`` into ``<work-dir>/nnUNet_raw``, runs nnU-Net's fingerprint
extraction (``nnUNetv2_extract_fingerprint --verify_dataset_integrity``) and its default planner
(``nnUNetv2_plan_experiment``: ``ExperimentPlanner``, plans ``nnUNetPlans``) with ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` set to folders under the work dir, times both, reads
``nnUNetPlans.json`` and prints, per configuration (3d_fullres, and 2d for reference), nnU-Net's numbers beside ours:
target spacing, patch/tile size, batch size, strides (nnU-Net's pool_op_kernel_sizes), kernel sizes, features per
level, normalisation, oversampling. A reason column says which differences come from our network being valid-padded
(a tile is its output plus a halo of ``2 * halo``; sizes follow the valid-size progression instead of nnU-Net's
divisibility by the pooling) or from a CPU budget, and marks the others as unexpected.

Axes: nnU-Net works in SimpleITK's array order of each image's voxel grid (``z, y, x`` = slice, row, column, after
its ``transpose_forward``); our plan is per RAS axis ``x, y, z`` (after MONAI's ``Orientationd("RAS")``). Each
nnU-Net axis is mapped to the RAS axis its voxel axis is closest to (as ``Orientationd`` picks it, from the direction
cosines of the converted images), and all numbers below are printed in RAS order.

Needs nnU-Net v2 (``pip install "monai-unet[bench]"``, i.e. nnunetv2==2.8.1).

Usage:
    python scripts/compare_nnunet_plan.py --studies ../shared/data/brain_tumor_progression_dicom
    python scripts/compare_nnunet_plan.py --studies S1 S2 --plan PLAN.json --json comparison.json
    python scripts/compare_nnunet_plan.py --studies S1 S2 --plan PLAN.json --reuse   # nnU-Net's plan of a last run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_raw  # noqa: E402

AXES = "xyz"
NNUNET_OVERSAMPLING = 0.33  # nnUNetTrainer.oversample_foreground_percent (a trainer setting, not in the plans)
REASON_VALID = "valid padding"
REASON_CPU = "CPU budget"


# ------------------------------------------------------------------------------------------------------------ axes


def ras_axes_of_images(raw_dataset: str | os.PathLike) -> tuple[list[int], dict[str, list[int]]]:
    """The RAS axis (0 = x, 1 = y, 2 = z) of each SimpleITK array axis (``z, y, x`` order) of the dataset's images.

    Returns:
        The most common mapping, and the mapping of each case (they differ only for mixed acquisitions).
    """
    import numpy as np
    import SimpleITK as sitk

    per_case: dict[str, list[int]] = {}
    for path in sorted((Path(raw_dataset) / "imagesTr").glob("*_0000.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        n = reader.GetDimension()
        direction = np.array(reader.GetDirection()).reshape(n, n)  # columns: the index axes i, j, k in LPS
        ras_of_index = [int(np.abs(direction[:, d]).argmax()) for d in range(n)]
        per_case[path.name[: -len("_0000.nii.gz")]] = [ras_of_index[n - 1 - a] for a in range(n)]
    if not per_case:
        raise FileNotFoundError(f"no *_0000.nii.gz image in {raw_dataset}/imagesTr")
    common = collections.Counter(tuple(v) for v in per_case.values()).most_common(1)[0][0]
    return list(common), per_case


def to_ras(values: Sequence[Any], ras_of_axis: Sequence[int]) -> list[Any]:
    """Values given per nnU-Net axis, reordered into RAS order (of the RAS axes these nnU-Net axes map to)."""
    order = sorted(range(len(values)), key=lambda a: ras_of_axis[a])
    return [values[a] for a in order]


def axis_names(ras_of_axis: Sequence[int]) -> str:
    return ", ".join(AXES[r] for r in sorted(ras_of_axis))


# ------------------------------------------------------------------------------------------------------- summaries


def nnunet_summary(plans: Mapping[str, Any], configuration: str, ras_of_array_axis: Sequence[int]) -> dict[str, Any]:
    """One configuration of an ``nnUNetPlans.json`` with every per-axis value in RAS order.

    Args:
        plans: the plans (``transpose_forward`` and ``configurations``).
        configuration: ``"3d_fullres"``, ``"2d"``...
        ras_of_array_axis: the RAS axis of each SimpleITK array axis (:func:`ras_axes_of_images`).
    """
    config = dict(plans["configurations"][configuration])
    while "inherits_from" in config:  # 3d_cascade_fullres
        parent = dict(plans["configurations"][config.pop("inherits_from")])
        parent.update(config)
        config = parent
    transpose = plans.get("transpose_forward", list(range(len(ras_of_array_axis))))
    ras_of_plan_axis = [ras_of_array_axis[t] for t in transpose]
    dims = len(config["patch_size"])
    ras = ras_of_plan_axis[-dims:]  # 2d: the in-plane (last two) plan axes
    arch = config["architecture"]["arch_kwargs"]
    strides = [to_ras(list(s), ras) for s in arch["strides"]]
    divisible = [1] * dims
    for s in strides:
        divisible = [d * v for d, v in zip(divisible, s)]
    return {
        "axes": axis_names(ras),
        "spacing": [round(float(v), 4) for v in to_ras(config["spacing"], ras)],
        "median_shape": [round(float(v)) for v in to_ras(config["median_image_size_in_voxels"], ras)],
        "patch_size": [int(v) for v in to_ras(config["patch_size"], ras)],
        "batch_size": int(config["batch_size"]),
        "levels": int(arch["n_stages"]),
        "features": [int(f) for f in arch["features_per_stage"]],
        "strides": strides,
        "kernel_size": [to_ras(list(k), ras) for k in arch["kernel_sizes"]],
        "divisible_by": divisible,
        "convs_per_level": [int(n) for n in arch["n_conv_per_stage"]],
        "norm_op": str(arch.get("norm_op", "")).rsplit(".", 1)[-1],
        "nonlin": str(arch.get("nonlin", "")).rsplit(".", 1)[-1],
        "normalization": list(config["normalization_schemes"]),
        "use_mask_for_norm": [bool(v) for v in config["use_mask_for_norm"]],
        "oversample_foreground": NNUNET_OVERSAMPLING,
    }


def _per_level(value: Any, levels: int, dims: int, default: Any) -> list[list[int]]:
    value = default if value is None else value
    if isinstance(value, int):
        value = [value] * levels
    return [[int(v)] * dims if isinstance(v, int) else [int(x) for x in v] for v in value]


def _numbers(value: Any) -> list[float] | None:
    """A list of numbers, or ``None`` (absent, or a config expression such as ``"$@..."``)."""
    if isinstance(value, (list, tuple)) and value and all(_num(v) for v in value):
        return [float(v) for v in value]
    return None


def our_summary(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Our PLAN.json (a bundle config overlay) in the same terms, with the halo and output sizes of its tiles.

    Keys read: ``target_spacing``, ``features``, ``kernel_size``, ``strides``, ``tile_size``, ``infer_tile_size``,
    ``batch_size``, ``norm`` (the network's), any other key naming a normalisation (``*norm*``) or oversampling
    (``*oversampl*``), ``plan_info``. Values that are config expressions count as absent.
    """
    from monai_unet.networks.sizes import AxisRule

    spacing = _numbers(plan.get("target_spacing"))
    features = [int(f) for f in _numbers(plan.get("features")) or []]
    tile = _numbers(plan.get("tile_size"))
    infer_tile = _numbers(plan.get("infer_tile_size"))
    dims = len(spacing or tile or [0, 0, 0])
    levels = len(features)
    batch = plan.get("batch_size")
    skip = ("plan_info", "norm")
    out: dict[str, Any] = {
        "spacing": [round(v, 4) for v in spacing] if spacing else None,
        "patch_size": [int(v) for v in tile] if tile else None,
        "infer_tile_size": [int(v) for v in infer_tile] if infer_tile else None,
        "batch_size": int(batch) if _num(batch) else None,
        "levels": levels or None,
        "features": features or None,
        "convs_per_level": [2] * levels if levels else None,  # the paper's two convolutions per level
        "norm_op": plan.get("norm"),
        "in_channels": int(plan["in_channels"]) if _num(plan.get("in_channels")) else None,
        "normalization": {k: v for k, v in plan.items() if "norm" in k.lower() and k not in skip} or None,
        "oversample_foreground": next(
            (v for k, v in plan.items() if "oversampl" in k.lower() or k.lower() in ("pos", "pos_fraction")), None
        ),
        "plan_info": plan.get("plan_info"),
    }
    if not levels:
        return out
    strides = _per_level(plan.get("strides"), levels, dims, [1] + [2] * (levels - 1))
    kernels = _per_level(plan.get("kernel_size"), levels, dims, 3)
    rules = [AxisRule(tuple(k[a] for k in kernels), tuple(s[a] for s in strides)) for a in range(dims)]
    out.update(
        strides=strides,
        kernel_size=kernels,
        halo=[r.halo for r in rules],
        valid_first=[r.first for r in rules],
        valid_step=[r.step for r in rules],
    )
    for key, size in (("output_size", out["patch_size"]), ("infer_output_size", out["infer_tile_size"])):
        out[key] = [r.output(s) for r, s in zip(rules, size)] if size else None
    return out


# ------------------------------------------------------------------------------------------------------- comparison


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return " ".join("x".join(str(v) for v in level) for level in value)
    if isinstance(value, (list, tuple)):
        return " x ".join(str(v) for v in value) if all(isinstance(v, (int, float)) for v in value) else str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _row(item: str, nn: Any, ours: Any, agree: str, reason: str = "", detail: str = "") -> dict[str, str]:
    return {"item": item, "nnunet": _fmt(nn), "ours": _fmt(ours), "agree": agree, "reason": reason, "detail": detail}


def _levels_agree(nn: Sequence[Any], ours: Sequence[Any] | None) -> tuple[str, bool]:
    """``("yes" | "first N/M" (levels) | "no" | "-", whether ours is a prefix of nnU-Net's)``."""
    if ours is None:
        return "-", True
    if list(nn) == list(ours):
        return "yes", True
    prefix = next((i for i, (a, b) in enumerate(zip(nn, ours)) if a != b), min(len(nn), len(ours)))
    return (f"first {prefix}/{len(nn)}" if prefix else "no"), prefix == len(ours)


def _median_shape(plan_info: Any) -> Any:
    if not isinstance(plan_info, Mapping):
        return None
    return next(
        (v for k, v in plan_info.items() if "median" in k.lower() and ("shape" in k.lower() or "size" in k.lower())),
        None,
    )


def compare(nn: Mapping[str, Any], ours: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Rows for one nnU-Net configuration (:func:`nnunet_summary`) against our plan (:func:`our_summary`; ``None``:
    nnU-Net only).

    Each row has ``item``, ``nnunet``, ``ours``, ``agree`` (``yes``, ``no``, ``-`` when ours is not given, ``?``
    when it cannot be told, or the levels that agree), ``reason`` (empty when they agree: ``valid padding``,
    ``CPU budget``, both, or ``unexpected`` where the same rule should give the same) and ``detail``.
    """
    import numpy as np

    o = dict(ours or {})
    rows = []

    def yes_no(same: bool) -> str:
        return "yes" if same else "no"

    def given(key: str) -> bool:
        return o.get(key) is not None

    # target spacing: the same rule (median; 10th percentile along an anisotropic axis)
    agree = yes_no(bool(np.allclose(nn["spacing"], o["spacing"], rtol=0.01))) if given("spacing") else "-"
    reason = "unexpected" if agree == "no" else ""
    detail = "both take the median spacing (10th percentile along an anisotropic axis)" if reason else ""
    rows.append(_row(f"target spacing (mm; {nn['axes']})", nn["spacing"], o.get("spacing"), agree, reason, detail))
    median = _median_shape(o.get("plan_info"))
    agree = yes_no([round(float(v)) for v in median] == nn["median_shape"]) if median is not None else "-"
    reason, detail = "", ""
    if agree == "no":
        reason = "nonzero crop"
        detail = (
            "nnU-Net's median is of the images cropped to their nonzero bounding box (median relative size after "
            f"cropping {nn.get('cropped_fraction', float('nan')):.3f}); a plan of the bundle's uncropped images sees "
            "whole images"
        )
    rows.append(_row("median image (voxels)", nn["median_shape"], median, agree, reason, detail))

    # depth: nnU-Net pools until the feature map is 4 voxels wide; every valid level adds to our halo
    levels = o.get("levels")
    agree = yes_no(levels == nn["levels"]) if levels else "-"
    reason, detail = "", ""
    if levels and levels < nn["levels"]:
        reason = f"{REASON_VALID} + {REASON_CPU}"
        detail = (
            f"each level of unpadded convolutions adds to the halo (ours: {_fmt(o.get('halo'))} per side) and so to "
            "the tile; nnU-Net (same padding) pools until the coarsest feature map is 4 voxels wide"
        )
    elif levels and levels > nn["levels"]:
        reason = "unexpected"
    rows.append(_row("levels (poolings + 1)", nn["levels"], levels, agree, reason, detail))
    for key, label in (("strides", "strides per level"), ("kernel_size", "kernel sizes per level")):
        agree, prefix = _levels_agree(nn[key], o.get(key))
        reason = "" if agree in ("yes", "-") else ("fewer levels" if prefix else "unexpected")
        detail = "the same rule per level (pool an axis only within 2x of the finest spacing)" if agree == "no" else ""
        rows.append(_row(label, nn[key], o.get(key), agree, reason, detail))
    agree, _ = _levels_agree(nn["features"], o.get("features"))
    reason = "" if agree in ("yes", "-") else REASON_CPU
    detail = "nnU-Net's 32 doubling to 320 (3D) / 512 (2D) is sized for an 8 GB GPU" if reason else ""
    rows.append(_row("features per level", nn["features"], o.get("features"), agree, reason, detail))
    convs = o.get("convs_per_level")
    agree = "-" if convs is None else yes_no(set(convs) == set(nn["convs_per_level"]))
    rows.append(_row("convolutions per level", nn["convs_per_level"], convs, agree))
    rows.append(_row("norm / activation", f"{nn['norm_op']} / {nn['nonlin']}", o.get("norm_op"), "-"))

    # patch: nnU-Net's is a multiple of its pooling and its output equals it; ours is output + 2 * halo
    agree = yes_no(list(nn["patch_size"]) == list(o["patch_size"])) if given("patch_size") else "-"
    reason = f"{REASON_VALID} + {REASON_CPU}" if agree == "no" else ""
    detail = (
        f"our tile = output + 2*halo, a valid size (first {_fmt(o.get('valid_first'))} + k*"
        f"{_fmt(o.get('valid_step'))}) where nnU-Net's patch is a multiple of {_fmt(nn['divisible_by'])}; "
        "its size is set by a CPU time/memory budget, nnU-Net's by an 8 GB GPU reference"
        if reason
        else ""
    )
    rows.append(_row("patch / training tile (input)", nn["patch_size"], o.get("patch_size"), agree, reason, detail))
    if given("output_size"):
        agree = yes_no(list(nn["patch_size"]) == list(o["output_size"]))
        reason = REASON_VALID if agree == "no" else ""
        detail = "an unpadded network predicts only the tile's centre; nnU-Net's output is its patch" if reason else ""
        rows.append(_row("output per training tile", nn["patch_size"], o["output_size"], agree, reason, detail))
    if given("infer_tile_size"):
        rows.append(
            _row(
                "inference tile (input -> output)",
                f"{_fmt(nn['patch_size'])}, step 0.5, Gaussian-weighted",
                f"{_fmt(o['infer_tile_size'])} -> {_fmt(o.get('infer_output_size'))}, no overlap",
                "no",
                REASON_VALID,
                "overlap-tile inference needs no overlap (outputs tile the image exactly); a larger inference tile "
                "amortises the halo",
            )
        )
    batch = o.get("batch_size")
    agree = yes_no(batch == nn["batch_size"]) if batch is not None else "-"
    reason = REASON_CPU if agree == "no" else ""
    detail = (
        "nnU-Net: at least 2 (3D) from an 8 GB GPU reference, at most 5% of the dataset's voxels per batch; ours: "
        "for the budgeted tile, the 5% counted on its output, 1 allowed (the paper's one large tile per step)"
        if reason
        else ""
    )
    rows.append(_row("batch size", nn["batch_size"], batch, agree, reason, detail))

    norm_nn = [
        f"{scheme.replace('Normalization', '').lower()}{' in nonzero mask' if mask else ''}"
        for scheme, mask in zip(nn["normalization"], nn["use_mask_for_norm"])
    ]
    norm_ours = _normalization_of(o.get("normalization"))
    channels = o.get("in_channels") or (len(norm_ours) if isinstance(norm_ours, list) else None)
    agree = yes_no(channels == len(norm_nn)) if channels else "-"
    detail = "ours: the bundle's input channels; nnU-Net's: the conversion's --channels" if agree == "no" else ""
    rows.append(_row("input channels", len(norm_nn), channels, agree, "channels chosen" if detail else "", detail))
    agree = "-"
    if isinstance(norm_ours, list):  # per channel; with other channels, the schemes each side uses
        agree = yes_no(norm_ours == norm_nn if len(norm_ours) == len(norm_nn) else set(norm_ours) == set(norm_nn))
    elif norm_ours is not None:  # free text: z-score or not, masked or not
        text = norm_ours.lower()
        if any(t in text for t in ("zscore", "z-score", "z_score", "normalizeintensity")):
            nonzero = "nonzero" in text and not any(t in text for t in ('"nonzero": false', "nonzero=false"))
            agree = yes_no(all(n == "zscore" for n in norm_nn) and nonzero == any(nn["use_mask_for_norm"]))
        else:
            agree = "?"
    reason = "unexpected" if agree == "no" else ""
    detail = (
        "nnU-Net: per-image z-score for MR, inside the nonzero mask only when cropping shrank the median image below "
        "75%; CT: clipped to the foreground's 0.5-99.5 percentiles, z-scored with its mean and std"
        if reason
        else ""
    )
    ours_text = ", ".join(norm_ours) if isinstance(norm_ours, list) else norm_ours
    rows.append(_row("normalisation per channel", ", ".join(norm_nn), ours_text, agree, reason, detail))
    over = o.get("oversample_foreground")
    agree = "-" if over is None else "?"
    if over is not None and _num(over):
        agree = yes_no(abs(float(over) - nn["oversample_foreground"]) < 0.02)
    rows.append(_row("foreground oversampling", f"{nn['oversample_foreground']} (trainer default)", over, agree))
    return rows


def _normalization_of(value: Any) -> list[str] | str | None:
    """Our normalisation in nnU-Net's words, per channel (``zscore``, ``zscore in nonzero mask``, ``ct``) when the
    plan gives ``[{"scheme": ..., "nonzero": ...}, ...]``; otherwise its text; ``None`` when the plan has none."""
    if value is None:
        return None
    if isinstance(value, Mapping) and len(value) == 1:  # {key: value}, as our_summary collects it
        value = next(iter(value.values()))
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "scheme" in v for v in value):
        return [f"{str(v['scheme']).lower()}{' in nonzero mask' if v.get('nonzero') else ''}" for v in value]
    return value if isinstance(value, str) else json.dumps(value)


def _num(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def format_table(rows: Sequence[Mapping[str, str]], width: int = 132) -> str:
    """A plain-text table of :func:`compare` rows (long cells wrapped; columns of ours left out when no plan was
    given), each row's detail as a numbered note below it."""
    header = {"item": "item", "nnunet": "nnU-Net", "ours": "ours", "agree": "agree", "reason": "reason"}
    keys = [k for k in header if k in ("item", "nnunet") or any(r[k] not in ("", "-") for r in rows)]
    caps = {"item": 30, "nnunet": 32, "ours": 32, "agree": 9, "reason": max(12, width - 30 - 32 - 32 - 9 - 8)}
    widths = {k: min(caps[k], max(len(str(r[k])) for r in [header, *rows])) for k in keys}
    lines, notes = [], []
    for i, row in enumerate([header, *rows]):
        cells = {k: textwrap.wrap(str(row[k]), widths[k]) or [""] for k in keys}
        if row.get("detail") and "reason" in cells:
            notes.append(row["detail"])
            cells["reason"][-1] += f" [{len(notes)}]"
        for j in range(max(len(c) for c in cells.values())):
            lines.append("  ".join((cells[k][j] if j < len(cells[k]) else "").ljust(widths[k]) for k in keys).rstrip())
        if i == 0:
            lines.append("  ".join("-" * widths[k] for k in keys))
    for n, note in enumerate(notes, 1):
        lines.extend(textwrap.wrap(note, width, initial_indent=f"[{n}] ", subsequent_indent="    "))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- running nnU-Net


def _nnunet_command(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise SystemExit(f'{name} not found: install nnU-Net v2 with pip install "monai-unet[bench]" (nnunetv2==2.8.1).')


def run_nnunet_planning(work_dir: Path, dataset_id: int, num_processes: int) -> dict[str, float]:
    """Fingerprint extraction (with the dataset integrity check) and the default planner; seconds of each."""
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(work_dir / key)
        (work_dir / key).mkdir(parents=True, exist_ok=True)
    env.setdefault("nnUNet_def_n_proc", str(num_processes))
    steps = {
        "fingerprint_s": [
            _nnunet_command("nnUNetv2_extract_fingerprint"),
            "-d",
            str(dataset_id),
            "-np",
            str(num_processes),
            "--verify_dataset_integrity",
            "--clean",
            "--no_pbar",
        ],
        "plan_s": [_nnunet_command("nnUNetv2_plan_experiment"), "-d", str(dataset_id)],
    }
    seconds = {}
    with open(work_dir / "nnunet.log", "w") as log:
        for key, command in steps.items():
            start = time.perf_counter()
            done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
            seconds[key] = round(time.perf_counter() - start, 1)
            if done.returncode != 0:
                log.flush()
                tail = (work_dir / "nnunet.log").read_text()[-3000:]
                raise SystemExit(
                    f"{' '.join(command)} failed ({done.returncode}); log {work_dir / 'nnunet.log'}:\n{tail}"
                )
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", nargs="+", required=True, help="DICOM study folders, NIfTI datasets, or parents")
    p.add_argument("--plan", type=Path, default=None, help="our PLAN.json (or a bundle config overlay) to compare")
    p.add_argument("--channels", nargs="+", default=None, metavar="NAME[=PATTERN]", help="as in nnunet_raw.py")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "nnunet_plan")
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--name", default="BrainTumorProgression")
    p.add_argument("--num-processes", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the nnU-Net plans of an earlier run in the work dir (studies unchecked)",
    )
    p.add_argument("--json", type=Path, default=None, help="save the comparison as JSON")
    args = p.parse_args(argv)

    work = args.work_dir.resolve()
    raw_root = work / "nnUNet_raw"
    folder_name = nnunet_raw.dataset_folder_name(args.dataset_id, args.name)
    plans_path = work / "nnUNet_preprocessed" / folder_name / "nnUNetPlans.json"
    timing_path = work / "timing.json"
    if args.reuse and plans_path.is_file() and timing_path.is_file():
        timing = json.loads(timing_path.read_text())
        print(f"reusing nnU-Net's plans of an earlier run: {plans_path}")
    else:
        start = time.perf_counter()
        channels = nnunet_raw.parse_channels(args.channels) if args.channels else None
        try:
            raw = nnunet_raw.convert(args.studies, raw_root, args.dataset_id, args.name, channels, overwrite=True)
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise SystemExit(f"error: {e}") from None
        timing = {"convert_s": round(time.perf_counter() - start, 1)}
        print(f"[1/2] converted to {raw} in {timing['convert_s']} s", flush=True)
        print(f"[2/2] nnU-Net fingerprint and plan ({args.num_processes} processes; log {work / 'nnunet.log'})")
        timing.update(run_nnunet_planning(work, args.dataset_id, args.num_processes))
        timing["nnunet_total_s"] = round(timing["fingerprint_s"] + timing["plan_s"], 1)
        timing_path.write_text(json.dumps(timing, indent=2) + "\n")

    from importlib.metadata import PackageNotFoundError, version

    try:
        nn_version = version("nnunetv2")
    except PackageNotFoundError:
        nn_version = "unknown"
    plans = json.loads(plans_path.read_text())
    fingerprint = json.loads(plans_path.with_name("dataset_fingerprint.json").read_text())
    ras_of_array, per_case = ras_axes_of_images(raw_root / folder_name)
    plan = json.loads(args.plan.read_text()) if args.plan else None
    ours = our_summary(plan) if plan else None
    our_dims = len(ours["spacing"] or ours["patch_size"] or []) if ours else 0

    print(f"\nnnU-Net v2 {nn_version}, ExperimentPlanner (nnUNetPlans); plans: {plans_path}")
    print(
        f"planning time: fingerprint {timing['fingerprint_s']} s (with the integrity check), planner "
        f"{timing['plan_s']} s, together {timing['nnunet_total_s']} s; conversion {timing.get('convert_s', '-')} s"
    )
    mapping = ", ".join(f"{a} -> {AXES[r]}" for a, r in zip(("z (slices)", "y (rows)", "x (columns)"), ras_of_array))
    mixed = len({tuple(v) for v in per_case.values()}) > 1
    print(
        f"axes: nnU-Net's are SimpleITK array order (z, y, x) of each image's voxel grid, transpose_forward "
        f"{plans.get('transpose_forward')}; mapped to our RAS axes as {mapping} (the closest RAS axis of each voxel "
        f"axis, as Orientationd picks it{'; MIXED across cases, the most common shown' if mixed else ''}). "
        "Every per-axis value below is in RAS order."
    )
    spacings = [to_ras(s, ras_of_array) for s in fingerprint["spacings"]]
    shapes = [to_ras(s, ras_of_array) for s in fingerprint["shapes_after_crop"]]
    print(
        "fingerprint: spacings (x, y, z) "
        + "; ".join(_fmt([round(v, 4) for v in s]) for s in spacings)
        + "\n             shapes after crop "
        + "; ".join(_fmt(s) for s in shapes)
        + f"\n             median relative size after cropping {fingerprint['median_relative_size_after_cropping']:.3f}"
    )
    if ours is not None and ours.get("halo"):
        print(
            f"ours: {args.plan}: halo {_fmt(ours['halo'])} per side; valid tile sizes first {_fmt(ours['valid_first'])}"
            f" + k * {_fmt(ours['valid_step'])}"
        )

    result: dict[str, Any] = {
        "nnunetv2": nn_version,
        "planner": "ExperimentPlanner",
        "plans": str(plans_path),
        "timing": timing,
        "axes": {"nnunet_array_axes_zyx_to_ras": [AXES[r] for r in ras_of_array], "mixed": mixed},
        "fingerprint": {"spacings_xyz": spacings, "shapes_after_crop_xyz": shapes},
        "our_plan": str(args.plan) if args.plan else None,
        "ours": ours,
        "configurations": {},
    }
    for configuration in ("3d_fullres", "3d_lowres", "2d"):
        if configuration not in plans["configurations"]:
            continue
        nn = nnunet_summary(plans, configuration, ras_of_array)
        nn["cropped_fraction"] = float(fingerprint["median_relative_size_after_cropping"])
        dims = len(nn["patch_size"])
        against = ours if ours is not None and dims == our_dims else None
        rows = compare(nn, against)
        title = f"{configuration} (axes {nn['axes']})"
        if ours is not None and against is None:
            title += f": nnU-Net only, for reference (our plan is {our_dims}D)"
        print(f"\n== {title}\n{format_table(rows)}")
        result["configurations"][configuration] = {"nnunet": nn, "rows": rows}
    info = ours.get("plan_info") if ours is not None else None
    if isinstance(info, Mapping):
        for key in ("output_size", "infer_output_size", "halo"):  # the plan's own arithmetic against AxisRule's
            if info.get(key) is not None and ours.get(key) is not None and list(info[key]) != list(ours[key]):
                print(f"\nWARNING: the plan's plan_info.{key} {info[key]} differs from its sizes' {ours[key]}")
        reasons = info.get("reasons")
        if isinstance(reasons, Mapping):
            print("\nour plan's reasons (plan_info.reasons):")
            for key, text in reasons.items():
                print(textwrap.fill(f"{key}: {text}", 132, initial_indent="  ", subsequent_indent="    "))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\ncomparison saved to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
