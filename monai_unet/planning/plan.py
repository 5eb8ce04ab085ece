"""``monai-unet plan``: a valid-padded U-Net planned for a dataset, nnU-Net style, as a bundle config overlay.

:func:`make_plan` fingerprints the dataset as the bundle reads it, applies the rules of
:mod:`monai_unet.planning.rules` and the memory loop of :mod:`monai_unet.planning.network`, optionally times real
training steps of the planned network, and returns the overlay: the top-level keys that the bundle's
``train.json``/``inference.json`` read (``target_spacing``, ``features``, ``kernel_size``, ``strides``,
``tile_size``, ``infer_tile_size``, ``batch_size``, ``normalization``, ``oversample_foreground``, ``in_channels``,
``out_channels``) and ``plan_info`` (fingerprint summary, a reason for every choice, options, command, version),
which no config reads. :func:`format_plan` prints it as a table; :func:`write_plan` writes it atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.planning.budget import (
    MIB,
    default_memory_mb,
    describe,
    measure_training_steps,
)
from monai_unet.planning.fingerprint import DatasetFingerprint, PlanError, fingerprint_dataset
from monai_unet.planning.network import plan_infer_tile, plan_network, receptive_field
from monai_unet.planning.rules import (
    axis_name,
    choose_batch_size,
    choose_normalization,
    foreground_oversampling,
    random_tile_hit_rate,
    target_spacing,
)

__all__ = ["PLAN_KEYS", "BundleInfo", "PlanOptions", "format_plan", "make_plan", "read_bundle", "write_plan"]

# the keys of a plan that bundle configs read, in the order the table prints them
PLAN_KEYS = (
    "target_spacing",
    "in_channels",
    "out_channels",
    "features",
    "kernel_size",
    "strides",
    "deep_supervision",
    "tile_size",
    "batch_size",
    "infer_tile_size",
    "normalization",
    "oversample_foreground",
    "elastic_sigma",
    "rotate_range",
    "scale_range",
)
CPU_FEATURES = (8, 128)
CUDA_FEATURES = (32, 320)  # nnU-Net's 3D features
CPU_MEMORY_CAP_MB = 1024
REFERENCE_BATCH = {2: 12, 3: 2}  # nnU-Net's reference batch sizes
PADDING = "mirror-pads (SpatialPadd, reflect)"


@dataclass(frozen=True)
class PlanOptions:
    """What the plan was made for (saved in ``plan_info["options"]``; a re-plan with them gives the same plan).

    Attributes:
        memory_mb: memory of one training step (and of one inference forward).
        base_features, max_features: channels of the top level, and the cap (doubling per level).
        device: where the plan is for and where the step is timed.
        min_feature_map, max_pools: the topology rule's minimum feature map and its depth cap.
        target_spacing: the spacing to plan for instead of nnU-Net's rule (its ``-overwrite_target_spacing``),
            one value per spatial axis in the bundle's axis order; ``None``: the rule decides.
        configuration: ``"3d"`` (nnU-Net's ``3d_fullres``) or ``"2d"`` (nnU-Net's ``2d`` on the 3D bundle: the
            network sees each slice on its own along the axis of the coarsest spacing: kernel 1 and no pooling
            along it).
        slices: with ``"2d"``, the neighbouring slices one training tile holds (each is segmented on its own;
            they share the tile's instance normalisation, as a 2D batch shares a batch).
        deep_supervision: decoder levels below the top with their own output and loss (nnU-Net's deep
            supervision, ``UNet(deep_supervision=...)``); 0: none, the paper.
    """

    memory_mb: int
    base_features: int
    max_features: int
    device: str
    min_feature_map: int = 4
    max_pools: int = 5
    target_spacing: list[float] | None = None
    configuration: str = "3d"
    slices: int = 4
    deep_supervision: int = 0

    @classmethod
    def for_device(
        cls,
        device: str | None = None,
        memory_mb: int | None = None,
        base_features: int | None = None,
        max_features: int | None = None,
        **kwargs: Any,
    ) -> PlanOptions:
        """Options with the device's defaults for those not given: on CUDA the GPU's memory and nnU-Net's 32 to
        320 features; on the CPU a quarter of the physical memory up to 1024 MiB and 8 to 128 features (see
        :func:`budget_reasons`)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            cuda = torch.device(device).type == "cuda"
        except RuntimeError as e:
            raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1...).") from e
        if cuda and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; plan with --device cpu.")
        if memory_mb is None:
            memory_mb = default_memory_mb(device) if cuda else min(default_memory_mb(device), CPU_MEMORY_CAP_MB)
        base, top = CUDA_FEATURES if cuda else CPU_FEATURES
        return cls(
            memory_mb=int(memory_mb),
            base_features=int(base_features or base),
            max_features=int(max_features or max(top, base_features or base)),
            device=str(device),
            **kwargs,
        )


@dataclass(frozen=True)
class BundleInfo:
    """What planning reads of a bundle's ``train.json``: dimensionality, classes, named channels, normalisation."""

    name: str
    path: Path
    spatial_dims: int
    out_channels: int
    channels: dict[str, Any] | None
    norm: Any
    parser: Any

    @property
    def kind(self) -> str:
        return "volume" if self.spatial_dims == 3 else "membrane"


def read_bundle(bundle: str | os.PathLike) -> BundleInfo:
    """Parse a bundle's ``train.json`` (name or folder) for what planning needs."""
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    path = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle_config(path, "train")))
    return BundleInfo(
        name=path.name,
        path=path,
        spatial_dims=int(parser.get_parsed_content("network_def#spatial_dims")),
        out_channels=int(parser.get_parsed_content("network_def#out_channels")),
        channels=dict(parser.get_parsed_content("channels")) if "channels" in parser else None,
        norm=parser.get_parsed_content("network_def#norm") if "norm" in parser.get("network_def") else None,
        parser=parser,
    )


def budget_reasons(options: PlanOptions) -> tuple[str, str]:
    """Why the features and the memory budget are what they are (default or given)."""
    cuda = torch.device(options.device).type == "cuda"
    default_features = (CUDA_FEATURES if cuda else CPU_FEATURES) == (options.base_features, options.max_features)
    if not default_features:
        features = f"--base-features {options.base_features} --max-features {options.max_features} as given"
    elif cuda:
        features = "nnU-Net's 32 doubling per level, capped at 320 (the CUDA default)"
    else:
        features = (
            "8 doubling per level, capped at 128 (the CPU default; nnU-Net's 32 to 320 is sized for a GPU: 4x the "
            "channels is about 16x the multiply-adds of every convolution, and this project's budget is a fold "
            "trained within 45 minutes on 2 CPU cores)"
        )
    memory = f"{options.memory_mb} MiB"
    if not cuda:
        memory += (
            f" (on the CPU the default is a quarter of the physical memory, at most {CPU_MEMORY_CAP_MB} MiB: there a "
            "step's time runs out before the memory, and a step of this size already takes seconds on 2 cores)"
        )
    return features, memory


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return " ".join("x".join(str(v) for v in level) for level in value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        return "; ".join(", ".join(f"{k}={v}" for k, v in s.items()) for s in value)
    if isinstance(value, (list, tuple)):
        return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _padding_notes(
    fp: DatasetFingerprint, spacing: tuple[float, ...], tile: tuple[int, ...], first: list[int], listed: int = 5
) -> list[str]:
    """Which cases the bundle pads up to the tile by mirroring (``SpatialPadd`` in unet3d_volume, the random crop's
    mirrored padding in unet2d_membrane): a count for those smaller than the tile, a name for each one smaller than
    the smallest valid tile (up to ``listed``)."""
    axes = "xyz"
    smaller: dict[str, int] = {}
    tiny = []
    for case in fp.cases:
        shape = [round(n * s / t) for n, s, t in zip(case.shape, case.spacing, spacing)]
        small = [a for a in range(len(tile)) if shape[a] < tile[a]]
        if small:
            where = ", ".join(axes[a] for a in small)
            smaller[where] = smaller.get(where, 0) + 1
        below = [a for a in range(len(tile)) if shape[a] < first[a]]
        if below:
            tiny.append(
                f"{case.image} is {'x'.join(map(str, shape))} voxels at the target spacing, smaller than the smallest "
                f"valid tile ({'x'.join(map(str, first))}) along {', '.join(axes[a] for a in below)}: the bundle "
                f"{PADDING} it up to the tile"
            )
    notes = [
        f"{n} of {len(fp.cases)} case(s) are smaller than the tile {'x'.join(map(str, tile))} along {where} at the "
        f"target spacing: the bundle {PADDING} them up to it (the tile is the output plus the halo)"
        for where, n in smaller.items()
    ]
    return notes + tiny[:listed] + ([f"... and {len(tiny) - listed} more such case(s)"] if len(tiny) > listed else [])


def make_plan(
    bundle: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    options: PlanOptions | None = None,
    measure: bool = True,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Plan a valid U-Net of ``bundle`` for the dataset in ``dataset_dir``.

    Args:
        bundle: bundle name or folder (its ``train.json`` gives the dimensionality, classes and channels).
        dataset_dir: any dataset the bundle reads.
        options: budget and features (default: :meth:`PlanOptions.for_device`).
        measure: time 2-3 training steps of the planned network on random data (``plan_info["measured"]``).
        progress: called with progress lines (e.g. ``print``).
        command: the command line, recorded in ``plan_info``.

    Returns:
        The plan: a bundle config overlay (:data:`PLAN_KEYS` and ``plan_info``), JSON values only.

    Raises:
        PlanError: bad data (naming the case) or a budget too small for any valid tile.
    """
    import monai_unet
    from monai_unet.networks import UNet

    options = options or PlanOptions.for_device()
    say = progress or (lambda _line: None)
    info = read_bundle(bundle)
    dims = info.spatial_dims
    if options.configuration not in ("3d", "2d"):
        raise PlanError(f"configuration {options.configuration!r}: use '3d' (nnU-Net's 3d_fullres) or '2d'.")
    if options.configuration == "2d" and dims != 3:
        raise PlanError(f"--configuration 2d plans a volume slice by slice; {info.name} is {dims}D already.")
    if options.slices < 1:
        raise PlanError(f"--slices {options.slices}: a tile holds at least one slice.")
    say(f"fingerprinting {dataset_dir} as {info.name} reads it")
    fp = fingerprint_dataset(dataset_dir, info.kind, info.out_channels, info.channels, progress=say)
    reasons: dict[str, str] = {}

    spacing, reasons["target_spacing"] = target_spacing(fp.spacings, fp.shapes)
    if options.target_spacing is not None:
        given = tuple(float(v) for v in options.target_spacing)
        if len(given) != dims or min(given) <= 0:
            raise PlanError(f"--target-spacing needs {dims} positive values (mm, one per axis), got {list(given)}.")
        rule = reasons["target_spacing"]
        reasons["target_spacing"] = f"{_fmt(given)} mm as given (--target-spacing; the rule: {rule})"
        spacing = given
    shapes = [[max(1, round(n * s / t)) for n, s, t in zip(c.shape, c.spacing, spacing)] for c in fp.cases]
    median = [round(float(v)) for v in np.median(shapes, axis=0)]
    flat: tuple[int, ...] = ()
    if options.configuration == "2d":
        axis = max(range(dims), key=lambda a: (spacing[a], a))
        flat = (axis,)
        median[axis] = min(options.slices, median[axis])
        configuration = (
            f"2d (nnU-Net's 2d configuration): slice by slice along {axis_name(axis, dims)}, the axis of the "
            f"coarsest spacing ({spacing[axis]:g} mm): kernel 1 and no pooling along it, {median[axis]} neighbouring "
            "slices per training tile (segmented each on its own, normalised together as a 2D batch is batched); "
            "a tile covers far less than a case, so a step costs a fraction of a 3D one and training sees many more "
            "tiles in the same time"
        )
    else:
        configuration = "3d (nnU-Net's 3d_fullres)"
    largest = [int(v) for v in np.max(shapes, axis=0)]
    dataset_voxels = float(sum(math.prod(s) for s in shapes))
    budget = options.memory_mb * MIB
    norm = info.norm is not None
    reference = REFERENCE_BATCH[dims]
    batch = reference
    try:
        for _ in range(8):  # fit the tile for a batch, cap the batch at 5% of the dataset; again if it changed
            net = plan_network(
                spacing,
                median,
                budget,
                batch,
                options.base_features,
                options.max_features,
                fp.channels,
                info.out_channels,
                norm,
                options.min_feature_map,
                options.max_pools,
                flat=flat,
            )
            new_batch, reasons["batch_size"] = choose_batch_size(reference, math.prod(net.output), dataset_voxels)
            if new_batch == batch:
                break
            batch = new_batch
    except ValueError as e:
        raise PlanError(str(e)) from e
    assert net.rules.axes is not None
    topo = net.topology
    try:  # the network refuses levels whose voxels do not line up with the top output's
        UNet(
            dims,
            1,
            info.out_channels,
            features=net.features,
            kernel_size=topo.kernel_size,
            strides=topo.strides,
            deep_supervision=options.deep_supervision,
        )
    except ValueError as e:
        raise PlanError(f"--deep-supervision {options.deep_supervision}: {e}") from e
    reasons["deep_supervision"] = (
        "none, as the paper (--deep-supervision N: nnU-Net's extra outputs on N decoder levels)"
        if options.deep_supervision == 0
        else f"--deep-supervision {options.deep_supervision} as given: decoder levels 1-{options.deep_supervision} "
        "get their own 1x1 output, each coarse voxel scored against the label voxels under it, with nnU-Net's "
        "weights (1/2^level, summing to 1); the top output alone segments"
    )
    halo = net.halo
    rf_vox, rf_mm = receptive_field(halo, spacing)
    infer_tile, infer_bytes = plan_infer_tile(net.rules, largest, spacing, budget, net.tile)
    infer_out = tuple(r.output(t) for r, t in zip(net.rules.axes, infer_tile))
    schemes, norm_reasons = choose_normalization(
        fp.modalities, fp.foreground_stats(), fp.median_relative_size_after_crop
    )
    extents = [
        None
        if c.foreground_box is None
        else [round(b * s / t) for b, s, t in zip(c.foreground_box, c.spacing, spacing)]
        for c in fp.cases
    ]
    voxels = fp.class_voxels()
    share, reasons["oversample_foreground"] = foreground_oversampling(
        random_tile_hit_rate(net.output, shapes, extents), sum(voxels[1:]) / max(sum(voxels), 1)
    )

    features_reason, memory = budget_reasons(options)
    reasons["features"] = f"{list(net.features)}: {features_reason}; one entry per level of the topology"
    levels = "; ".join(topo.table())
    reasons["kernel_size"] = (
        "per level, 3 along an axis once its spacing is within 2x of the finest, 1 before (a 1-wide kernel loses "
        f"nothing along a coarse axis); the bottom level follows the same rule (nnU-Net always uses 3). {levels}"
    )
    reasons["strides"] = (
        f"nnU-Net's get_pool_and_conv_props for a valid network: pool an axis only while its spacing is within 2x of "
        f"the finest and, following the shrinking maps of the valid convolutions from the region the output covers "
        f"({_fmt(net.target)}), the next level's map stays >= {options.min_feature_map} voxels; at most "
        f"{options.max_pools} poolings per axis: {topo.levels} levels, halo {_fmt(halo)} voxels per side, receptive "
        f"field {_fmt(rf_vox)} voxels = {_fmt(rf_mm)} mm"
    )
    if not net.shrunk:
        tile_why = (
            f"the smallest valid input whose output {_fmt(net.output)} covers the median case ({_fmt(median)} voxels "
            f"at the target spacing): input = output + 2 x halo"
        )
    else:
        tile_why = (
            f"memory is short of a tile whose output covers the median case ({_fmt(median)} voxels at the target "
            f"spacing): the region covered was shrunk along the axis longest in mm first, re-deriving the topology "
            f"each time as nnU-Net does (to {_fmt(net.target)}), then the tile grown along the axis shortest in mm "
            f"while it fits: output {_fmt(net.output)}, input = output + 2 x halo"
        )
    reasons["tile_size"] = (
        f"{tile_why}; a training step (batch {batch}) is estimated at {net.estimate_bytes // MIB} MiB of {memory}; "
        f"the bundle {PADDING} smaller cases up to it"
    )
    reasons["infer_tile_size"] = (
        f"the largest case is {_fmt(largest)} voxels: output {_fmt(infer_out)} "
        + ("covers it in one tile" if all(o >= n for o, n in zip(infer_out, largest)) else "within the budget")
        + f"; one forward without autograd is estimated at {infer_bytes // MIB} MiB of {options.memory_mb} MiB"
    )
    reasons["normalization"] = "; ".join(norm_reasons)
    modalities = ", ".join(fp.modalities)
    reasons["in_channels"] = f"every case has {fp.channels} input channel(s) ({modalities})"
    reasons["out_channels"] = (
        f"the bundle's {info.out_channels} classes; voxels per class in the dataset {voxels} "
        f"(foreground {sum(voxels[1:]) / max(sum(voxels), 1):.3%})"
    )

    measured: dict[str, Any] = {"estimated_mb": round(net.estimate_bytes / MIB)}
    plan: dict[str, Any] = {
        "target_spacing": [float(s) for s in spacing],
        "in_channels": fp.channels,
        "out_channels": info.out_channels,
        "features": list(net.features),
        "kernel_size": [list(k) for k in topo.kernel_size],
        "strides": [list(s) for s in topo.strides],
        "deep_supervision": options.deep_supervision,
        "tile_size": list(net.tile),
        "batch_size": batch,
        "infer_tile_size": list(infer_tile),
        "normalization": schemes,
        "oversample_foreground": share,
    }
    # the elastic deformation's displacement per axis in voxels: the same in millimetres along every axis (5 voxels
    # along the finest), none along a slice-by-slice axis (it would mix slices)
    if dims == 3:  # the 2D bundle keeps the paper's 2D elastic deformation (10 pixels)
        finest = min(s for a, s in enumerate(spacing) if a not in flat)
        plan["elastic_sigma"] = [0.0 if a in flat else round(5.0 * finest / s, 2) for a, s in enumerate(spacing)]
        reasons["elastic_sigma"] = (
            f"the elastic deformation's displacement (voxels) per axis: {5.0 * finest:g} mm along every axis (5 "
            "voxels along the finest)" + (", none along the slice-by-slice axis (it would mix slices)" if flat else "")
        )
        # nnU-Net's rotation and scaling (probability 0.2 each): a slice-by-slice plan rotates by any angle about the
        # slice axis and zooms in plane only; a 3D plan rotates by up to 30 degrees about every axis
        if flat:
            plan["rotate_range"] = [round(math.pi, 4) if a in flat else 0.0 for a in range(dims)]
        else:
            plan["rotate_range"] = [round(math.pi / 6, 4)] * dims
        plan["scale_range"] = [0.0 if a in flat else 0.3 for a in range(dims)]
        how = "any angle about the slice-by-slice axis, none that would tilt a slice"
        reasons["rotate_range"] = "nnU-Net's random rotation (probability 0.2): " + (
            how if flat else "up to 30 degrees about every axis"
        )
        reasons["scale_range"] = "nnU-Net's random zoom (probability 0.2), 0.7-1.3x" + (
            " in plane only" if flat else ""
        )
    if measure:
        say(f"timing training steps at tile {_fmt(net.tile)}, batch {batch} on {options.device}")
        measured = describe(_measure(info, plan, net.output, options.device), net.estimate_bytes / MIB)
    plan["plan_info"] = {
        "planner": "monai-unet plan",
        "version": monai_unet.__version__,
        "command": command,
        "bundle": info.name,
        "dataset_dir": str(dataset_dir),
        "options": asdict(options),
        "configuration": configuration,
        "median_shape": median,
        "largest_shape": largest,
        "output_size": list(net.output),
        "infer_output_size": list(infer_out),
        "halo": list(halo),
        "receptive_field_voxels": list(rf_vox),
        "receptive_field_mm": list(rf_mm),
        "levels": topo.table(),
        "reasons": reasons,
        "notes": _padding_notes(fp, spacing, net.tile, [r.first for r in net.rules.axes]),
        "measured": measured,
        "fingerprint": fp.to_json(),
    }
    return plan


def _measure(info: BundleInfo, plan: Mapping[str, Any], output: tuple[int, ...], device: str) -> Any:
    """Build the bundle's network with the plan's keys and time training steps (Dice + cross-entropy, SGD)."""
    from monai.losses import DiceCELoss

    from monai_unet.losses import deep_supervision_loss

    parser = info.parser
    for key in ("features", "kernel_size", "strides", "in_channels", "out_channels", "deep_supervision"):
        parser[key] = plan[key]
        parser[f"network_def#{key}"] = plan[key]
    network = parser.get_parsed_content("network_def", instantiate=True)
    loss = deep_supervision_loss(
        DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True), plan["deep_supervision"]
    )
    return measure_training_steps(
        network,
        loss,
        plan["tile_size"],
        plan["batch_size"],
        plan["in_channels"],
        plan["out_channels"],
        output,
        device=device,
    )


def format_plan(plan: Mapping[str, Any], width: int = 120) -> str:
    """The plan as a table: each key, its value and the reason for it; then the expected step time and memory."""
    import textwrap

    info = plan.get("plan_info", {})
    reasons = info.get("reasons", {})
    rows = [(k, _fmt(plan[k]), reasons.get(k, "")) for k in PLAN_KEYS if k in plan]
    kw = max(len(k) for k, _, _ in rows)
    vw = min(34, max(len(v) for _, v, _ in rows))
    rw = max(30, width - kw - vw - 4)
    lines = [f"{'key'.ljust(kw)}  {'value'.ljust(vw)}  reason", f"{'-' * kw}  {'-' * vw}  {'-' * rw}"]
    for key, value, reason in rows:
        vs = textwrap.wrap(value, vw) or [""]
        rs = textwrap.wrap(reason, rw) or [""]
        for i in range(max(len(vs), len(rs))):
            left = (key if i == 0 else "").ljust(kw)
            mid = (vs[i] if i < len(vs) else "").ljust(vw)
            lines.append(f"{left}  {mid}  {rs[i] if i < len(rs) else ''}".rstrip())
    lines.append("")
    lines.append(
        f"output {_fmt(info.get('output_size', []))} per tile, halo {_fmt(info.get('halo', []))} per side, "
        f"receptive field {_fmt(info.get('receptive_field_voxels', []))} voxels = "
        f"{_fmt(info.get('receptive_field_mm', []))} mm"
    )
    m = info.get("measured", {})
    if "step_seconds" in m:
        steps = int(45 * 60 // max(m["step_seconds"], 1e-3))
        lines.append(
            f"expected training step on this machine ({m['device']}, {m['threads']} threads): {m['step_seconds']} s "
            f"(timed {m['seconds']}; about {steps} steps in 45 minutes), peak memory {m['peak_mb']} MiB measured, "
            f"{m['estimated_mb']} MiB estimated"
        )
    elif m:
        lines.append(f"training step memory estimated at {m.get('estimated_mb')} MiB (not measured: --no-measure)")
    for note in info.get("notes", []):
        lines.extend(textwrap.wrap(f"note: {note}", width, subsequent_indent="      "))
    return "\n".join(lines)


def write_plan(plan: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the plan as indented JSON, atomically; an existing file only with ``overwrite``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from monai_unet.io.writers import write_json

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    return write_json(path, dict(plan))


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Fail before planning when the output exists (and ``overwrite`` is false) or its folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'plan.json'}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
