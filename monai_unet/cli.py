"""The ``monai-unet`` command: quickstart, train, plan (see :mod:`monai_unet.planning`), predict (see
:mod:`monai_unet.predict`), label, sizes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``key=value`` pairs; values are parsed as JSON when they parse (numbers, lists, true/false/null)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"monai-unet: override {pair!r} is not of the form key=value (e.g. max_epochs=4).")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from monai_unet.bundles import run_bundle

    overrides = parse_overrides(args.set)
    if args.dataset_dir is not None:
        overrides["dataset_dir"] = str(Path(args.dataset_dir).resolve())
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    if args.device is not None:
        overrides["device"] = f"$torch.device('{args.device}')"
    run_bundle(args.bundle, "training", ["train", *args.config], bundle_root=args.work_dir, **overrides)
    return 0


def _dice(pred, label) -> float:
    """Dice of two boolean masks (MONAI's ``compute_dice``; 1.0 when both are empty)."""
    import torch
    from monai.metrics import compute_dice

    y_pred, y = (torch.as_tensor(m, dtype=torch.float32)[None, None] for m in (pred, label))
    return float(compute_dice(y_pred, y, include_background=True, ignore_empty=False).item())


def _cmd_quickstart(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from monai_unet.bundles import run_bundle
    from monai_unet.data import make_datalists, prepare_dataset

    work = Path(args.work_dir).resolve()
    overrides = {} if args.max_epochs is None else {"max_epochs": args.max_epochs}
    if args.device is not None:
        overrides["device"] = f"$torch.device('{args.device}')"
    print(f"[1/2] training the 2D U-Net bundle on the embedded synthetic EM dataset in {work}", flush=True)
    run_bundle("unet2d_membrane", "training", ["train"], bundle_root=work, **overrides)

    val = make_datalists(prepare_dataset(None, "membrane", work / "data"), "membrane")["validation"]
    out_dir = work / "predictions"
    # the best validated model; the last weights when training stopped before its first validation
    ckpt = work / "models" / "model.pt"
    ckpt = ckpt if ckpt.is_file() else work / "models" / "model_final.pt"
    print(f"[2/2] segmenting {len(val)} held-out image(s) with {ckpt}", flush=True)
    run_bundle(
        "unet2d_membrane",
        "run",
        ["inference"],
        bundle_root=work,
        datalist=[str(d["image"]) for d in val],
        output_dir=str(out_dir),
        ckpt_path=str(ckpt),
        **({"device": overrides["device"]} if "device" in overrides else {}),
    )
    scores = []
    for d in val:
        pred_path = out_dir / f"{Path(d['image']).name.split('.')[0]}_seg.png"
        pred = np.asarray(Image.open(pred_path)) < 128
        label = np.asarray(Image.open(d["label"])) < 128
        scores.append(_dice(pred, label))
        print(f"  {pred_path}: membrane Dice {scores[-1]:.3f}")
    print(f"done: mean membrane Dice {np.mean(scores):.3f} on {len(scores)} held-out synthetic image(s)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from monai_unet.data.channels import parse_channel_options
    from monai_unet.predict import predict
    from monai_unet.predict.dicomweb import DicomWebOptions

    try:
        channels = None
        if args.channel:
            from monai_unet.predict.runner import BundleRunner

            runner = BundleRunner(
                args.bundle,
                checkpoint=args.checkpoint,
                device=args.device,
                overrides=parse_overrides(args.set),
                tta=args.tta,
                precision=args.precision,
                overlays=args.config,
            )
            channels = parse_channel_options(args.channel, runner.channels)
        else:
            runner = None
        results = predict(
            args.bundle,
            args.input,
            args.output,
            runner=runner,
            channels=channels,
            configs=args.config,
            tta=args.tta,
            precision=args.precision,
            dicomweb=DicomWebOptions(
                study=args.study, series=args.series, query=tuple(args.query), user=args.user, store_to=args.store_to
            ),
            checkpoint=args.checkpoint,
            device=args.device,
            overwrite=args.overwrite,
            allow_gaps=args.allow_gaps,
            naming=args.naming,
            shard=args.shard,
            probabilities=args.probabilities,
            dicom_seg=args.dicom_seg,
            large_threshold=args.large_threshold,
            large_format=args.large_format,
            large_memory_mb=args.large_memory_mb,
            dask=args.dask,
            progress=not args.no_progress,
            overrides=parse_overrides(args.set),
        )
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"monai-unet predict: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(
            "monai-unet predict: interrupted; finished outputs are kept, run the same command to resume.",
            file=sys.stderr,
        )
        return 128 + int(getattr(e, "signum", 2))  # 130 for Ctrl-C (SIGINT), 143 for SIGTERM
    return 0 if all(r.status != "failed" for r in results) else 1


def _cmd_plan(args: argparse.Namespace) -> int:
    import shlex

    from monai_unet.planning import PlanOptions, format_plan, make_plan, write_plan
    from monai_unet.planning.plan import check_writable

    command = "monai-unet " + shlex.join(args.argv) if args.argv is not None else None
    try:
        check_writable(args.output, args.overwrite)
        options = PlanOptions.for_device(
            args.device,
            memory_mb=args.memory_mb,
            base_features=args.base_features,
            max_features=args.max_features,
            max_pools=args.max_pools,
            target_spacing=args.target_spacing,
            configuration=args.configuration,
            slices=args.slices,
            deep_supervision=args.deep_supervision,
        )
        plan = make_plan(
            args.bundle,
            args.dataset_dir,
            options,
            measure=not args.no_measure,
            progress=lambda line: print(line, flush=True),
            command=command,
        )
        print(format_plan(plan))
        path = write_plan(plan, args.output, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, ValueError, RuntimeError) as e:
        print(f"monai-unet plan: {e}", file=sys.stderr)
        return 2
    print(
        f"plan written to {path}; train with: monai-unet train --bundle {args.bundle} --dataset-dir "
        f"{args.dataset_dir} --config {path}"
    )
    return 0


def _cmd_sizes(args: argparse.Namespace) -> int:
    from monai_unet.networks.sizes import halo_1d, input_size_1d, nearest_valid_sizes_1d, output_size_1d

    depth, padding = args.depth, args.padding
    print(f"U-Net depth {depth}, padding {padding!r}: halo {halo_1d(depth, padding)} px per side")
    for size in args.size:
        out = output_size_1d(size, depth, padding)
        if out > 0:
            print(f"  input {size} -> output {out}")
        else:
            below, above = nearest_valid_sizes_1d(size, depth, padding)
            near = f"{below} or {above}" if below > 0 else f"{above}"
            print(f"  input {size} is not valid: nearest valid inputs {near}")
    for out in args.output:
        print(f"  output >= {out} needs input {input_size_1d(out, depth, padding)}")
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from monai_unet.label.server import start_server

    weights = {}
    for pair in args.model:
        if "=" not in pair:
            raise SystemExit(f"monai-unet label: --model {pair!r} is not of the form NAME=CHECKPOINT.")
        name, path = pair.split("=", 1)
        weights[name] = path
    overlays: dict[str, list[str]] = {}
    for pair in args.config:
        if "=" not in pair:
            raise SystemExit(f"monai-unet label: --config {pair!r} is not of the form NAME=OVERLAY.json.")
        name, path = pair.split("=", 1)
        overlays.setdefault(name, []).extend([path] if path else [])
    conf = parse_overrides(args.conf)
    try:
        start_server(
            args.studies,
            app_dir=args.app_dir,
            host=args.host,
            port=args.port,
            models=args.models,
            weights=weights,
            conf={k: json.dumps(v) if not isinstance(v, str) else v for k, v in conf.items()},
            log_level=args.log_level,
            overlays=overlays,
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"monai-unet label: {e}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``monai-unet``."""
    parser = argparse.ArgumentParser(prog="monai-unet", description="The original U-Net for MONAI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("quickstart", help="train the 2D bundle on the embedded default, then segment held-out images")
    p.add_argument("--work-dir", default="runs/quickstart", help="where data, models and outputs go")
    p.add_argument("--max-epochs", type=int, default=None, help="override the bundle's max_epochs")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda:0 if present)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("train", help="run a bundle's training (python -m monai.bundle run training)")
    p.add_argument("--bundle", required=True, help="bundle folder, or unet2d_membrane / unet3d_volume")
    p.add_argument("--dataset-dir", default=None, help="real data folder (default: the synthetic embedded default)")
    p.add_argument("--work-dir", default=None, help="bundle_root for outputs (default: the bundle folder)")
    p.add_argument("--config", action="append", default=[], help="extra config of the bundle merged over train.json")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. epoch_length=20")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "plan",
        help="plan a valid U-Net for a dataset, nnU-Net style: writes a bundle config overlay (PLAN.json)",
        description="Fingerprint a dataset as the bundle reads it and plan the network (target spacing, kernels and "
        "strides per level, features), the training and inference tiles, the batch, the per-channel normalisation "
        "and the foreground oversampling; print each choice with its reason and the expected step time, and write "
        "the plan as a config overlay for train.json/inference.json (monai-unet train --config PLAN.json).",
    )
    p.add_argument("--bundle", required=True, help="bundle folder, or unet2d_membrane / unet3d_volume")
    p.add_argument("--dataset-dir", required=True, help="a dataset the bundle reads (folders, dataset.json, DICOM)")
    p.add_argument("--output", required=True, help="the plan file to write (JSON)")
    p.add_argument(
        "--memory-mb",
        type=int,
        default=None,
        help="memory of one training step in MiB (default: the GPU's memory on CUDA; on the CPU a quarter of the "
        "physical memory, at most 1024)",
    )
    p.add_argument("--base-features", type=int, default=None, help="channels of the top level (CPU 8, CUDA 32)")
    p.add_argument("--max-features", type=int, default=None, help="cap of the channels per level (CPU 128, CUDA 320)")
    p.add_argument("--max-pools", type=int, default=5, help="the most poolings along one axis (default 5)")
    p.add_argument(
        "--deep-supervision",
        type=int,
        default=0,
        metavar="N",
        help="nnU-Net's deep supervision: N decoder levels below the top get their own output, scored against the "
        "label (default 0: none, the paper; unpadded 3-wide kernels line up level 1 only)",
    )
    p.add_argument(
        "--target-spacing",
        type=float,
        nargs="+",
        default=None,
        metavar="MM",
        help="plan for this spacing (mm per axis, the bundle's axis order) instead of nnU-Net's median rule; "
        "coarser spacing widens the receptive field in mm and speeds up each step (nnU-Net's "
        "-overwrite_target_spacing)",
    )
    p.add_argument(
        "--configuration",
        choices=("3d", "2d"),
        default="3d",
        help="3d: nnU-Net's 3d_fullres; 2d: nnU-Net's 2d on a volume (slice by slice along the coarsest axis, "
        "kernel 1 and no pooling along it; for strongly anisotropic data such as 6.5 mm MR slices)",
    )
    p.add_argument("--slices", type=int, default=4, help="with --configuration 2d: slices per training tile (4)")
    p.add_argument("--device", default=None, help="plan for and time on this device (default: cuda if present)")
    p.add_argument("--no-measure", action="store_true", help="do not time training steps of the planned network")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan file")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "predict",
        help="segment DICOM series, NIfTI/NRRD/MHA volumes and 2D PNG/TIFF images with a bundle",
        description="Segment files and folders with a bundle's inference.json. Failed inputs are reported and "
        "the others finish; outputs are written atomically; inputs whose outputs exist are skipped (resume). "
        "Exit code 0 only if every input succeeded.",
        epilog="exit codes: 0 every input done or skipped; 1 some inputs failed (the others finished); 2 nothing "
        "ran (bad bundle, checkpoint, device, output folder or option); 130 interrupted by Ctrl-C (SIGINT); "
        "143 terminated (SIGTERM). Finished outputs are kept: run the same command to resume.",
    )
    p.add_argument("--bundle", required=True, help="bundle folder, or unet2d_membrane / unet3d_volume")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        default=None,
        help="model weights (default: the bundle's ckpt_path); several: an ensemble, their probabilities averaged",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        help="config overlay merged over the bundle's inference.json, as in training (a plan from monai-unet plan, "
        "configs/brain_tumor_progression.json); repeatable",
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME=PATTERN",
        help="which series (folder name or SeriesDescription, shell pattern; several joined by |) is the bundle's "
        "input channel NAME, e.g. --channel FLAIR='*FLAIR*|*T2 FLAIR*'",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation (all flips, probabilities averaged); without it, as the bundle config's "
        "tta says (a planned overlay may set it)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        default=None,
        help="what the network computes in (default: the bundle's inference.json precision, fp32); auto = bf16/fp16 "
        "only where the model's precision check (scripts/bench_precision.py --write-check, given with --config) met "
        "the goal on this device family, else fp32",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files and folders (DICOM series folders included), or a DICOMweb server: "
        "dicomweb+http://HOST:8042/dicom-web with --study, --series or --query",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: the bundle's)")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs exist")
    p.add_argument("--study", default=None, help="DICOMweb input: the StudyInstanceUID to segment")
    p.add_argument("--series", default=None, help="DICOMweb input: the SeriesInstanceUID to segment")
    p.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="DICOMweb input: a QIDO-RS match key, e.g. PatientID=PGBM-001 (repeatable; * and ? wildcards)",
    )
    p.add_argument(
        "--user",
        default=None,
        help="DICOMweb user; the password from MONAI_UNET_DICOMWEB_PASSWORD or typed when asked (never logged)",
    )
    p.add_argument(
        "--store-to",
        default=None,
        metavar="URL",
        help="send each DICOM-SEG back to this DICOMweb server (STOW-RS, needs --dicom-seg); series it holds "
        "a SEG of are skipped (resume)",
    )
    p.add_argument(
        "--naming",
        choices=("path", "dicom"),
        default="path",
        help="output names: path = the input's path below the common folder of all inputs (default); "
        "dicom = PatientID/StudyDate/<SeriesNumber>_<SeriesDescription> for DICOM series",
    )
    p.add_argument(
        "--allow-gaps",
        action="store_true",
        help="a DICOM series with a gap in its slice positions is segmented as its evenly spaced runs of slices, "
        "each on its own grid (*_part1of2_seg.nii.gz ...), instead of failing",
    )
    p.add_argument(
        "--shard",
        default=None,
        help="i/n: this process does inputs k with k %% n == i (0 <= i < n); "
        "default RANK/WORLD_SIZE of torchrun when set",
    )
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (*_probs)")
    p.add_argument("--dicom-seg", action="store_true", help="also write a DICOM-SEG for DICOM inputs (highdicom)")
    p.add_argument(
        "--large-threshold",
        type=int,
        default=4096 * 4096,
        help="2D TIFFs with more pixels are read and written tile by tile (default 4096*4096)",
    )
    p.add_argument(
        "--large-format",
        choices=("ome-tiff", "ome-zarr", "zarr"),
        default="ome-tiff",
        help="output of large images: ome-tiff (pyramidal *_seg.ome.tif, default) or ome-zarr (NGFF labels, "
        "*_seg.ome.zarr; zarr is the same)",
    )
    p.add_argument(
        "--large-memory-mb",
        type=int,
        default=192,
        help="large images: the tile is measured for speed among those whose activations fit this many MiB "
        "(0: the bundle's tile size)",
    )
    p.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="run on a Dask cluster: a scheduler address (tcp://host:8786) or local / local:N (N worker processes); "
        "the blocks of large images and the other inputs spread over its workers (docs/large_images.md)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    p.set_defaults(func=_cmd_predict)

    from monai_unet.export.cli import add_export_parser

    add_export_parser(sub)

    p = sub.add_parser("sizes", help="valid input/output sizes of a U-Net")
    p.add_argument("--depth", type=int, default=4, help="number of poolings (len(features) - 1)")
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    p.add_argument("--size", type=int, nargs="*", default=[], help="input sizes to check")
    p.add_argument("--output", type=int, nargs="*", default=[], help="output sizes to find inputs for")
    p.set_defaults(func=_cmd_sizes)

    p = sub.add_parser("label", help="serve the bundles to 3D Slicer: a MONAI Label server (needs the label extra)")
    p.add_argument("--studies", required=True, help="images to annotate (NIfTI/NRRD volumes, PNG/TIFF 2D images)")
    p.add_argument("--app-dir", default="monai-unet-label-app", help="app folder: bundle configs and served weights")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", default="all", help="all, or comma-separated bundle names to serve")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT", help="weights to serve")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=OVERLAY",
        help="config overlay the weights were trained with (a plan, final_overlay.json), merged over the bundle's "
        "configs and kept with them (NAME= for none); see docs/label_multichannel.md",
    )
    p.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE", help="MONAI Label app settings")
    p.add_argument("--log-level", default="info", help="server log level")
    p.set_defaults(func=_cmd_label)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-unet`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
