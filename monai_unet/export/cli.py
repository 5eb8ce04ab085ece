"""``monai-unet export``: a bundle's trained network as a bioimage.io model package.

Wired into the ``monai-unet`` command by :func:`add_export_parser` (the sub-command and its options) and
:func:`run_export` (its function, returning the exit code).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_export_parser", "run_export"]


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to ``subparsers`` (of ``monai-unet``); its ``func`` is :func:`run_export`."""
    p = subparsers.add_parser(
        "export",
        help="export a bundle's trained network as a bioimage.io model (Fiji/deepImageJ, ilastik, QuPath, napari)",
        description="Write a bioimage.io model package (format 0.5) from a bundle's inference.json, its "
        "export_bioimageio.json and a checkpoint: TorchScript, ONNX and pytorch_state_dict weights, the bundle's "
        "pre- and postprocessing as bioimage.io operations, test tensors from the bundle's own inference. Needs the "
        'bioimageio extra: pip install "monai-unet[bioimageio]". See docs/export_bioimageio.md.',
        epilog="exit codes: 0 written; 2 nothing written (bad bundle, checkpoint, transform without a bioimage.io "
        "equivalent, existing output, missing extra).",
    )
    p.add_argument("--bundle", required=True, help="bundle folder, or unet2d_membrane / unet3d_volume")
    p.add_argument("--checkpoint", default=None, help="model weights (default: the bundle's ckpt_path)")
    p.add_argument("--format", choices=("bioimageio",), default="bioimageio", help="package format (bioimageio)")
    p.add_argument("--output", required=True, help="the package to write, e.g. model.zip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--size-declaration",
        choices=("offset", "halo"),
        default=None,
        help="how the border the unpadded network loses is declared: offset = output smaller than the input (the "
        "spec's form for a network that crops itself); halo = output padded to the tile's size with a halo to crop "
        "(the form bioimageio.core, ilastik and napari tile; exact overlap-tile results). Default: the bundle's "
        "bioimageio_size_declaration, else offset",
    )
    p.add_argument(
        "--declare-spacing",
        action="store_true",
        default=None,
        help="declare the voxel size of the bundle's Spacingd on the input axes (users resample first) instead of "
        "refusing a bundle that resamples",
    )
    p.add_argument("--sample", default=None, help="image for the test tensors and cover (default: a synthetic one)")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX weights")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        help="config overlay merged over the bundle's configs, as in training and predict (repeatable)",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``monai-unet export`` with parsed ``args``; print the package written or why not. Returns the exit code."""
    from monai_unet.cli import parse_overrides

    try:
        from monai_unet.export.bioimageio import export_bioimageio

        path = export_bioimageio(
            args.bundle,
            args.checkpoint,
            args.output,
            configs=args.config,
            overrides=parse_overrides(args.set),
            overwrite=args.overwrite,
            size_declaration=args.size_declaration,
            declare_spacing=args.declare_spacing,
            sample=args.sample,
            onnx=not args.no_onnx,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ImportError, RuntimeError) as e:
        print(f"monai-unet export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (bioimage.io model; check it with: bioimageio test {path})")
    return 0
