"""A bundle's pre- and postprocessing as bioimage.io operations (model description format 0.5).

Each MONAI transform of the bundle's ``preprocessing`` / ``postprocessing`` is translated to the spec's operations
that compute the same thing (``ScaleIntensityd`` -> ``scale_range`` 0-100 %, ``ScaleIntensityRangePercentilesd`` ->
``scale_range`` + ``scale_linear`` + ``clip``, ``NormalizeIntensityd`` -> ``zero_mean_unit_variance``,
``Activationsd(softmax)`` -> ``softmax``...), or :class:`UnsupportedTransformError` names the transform that has no
equivalent. What the spec leaves to the tool is recorded, not dropped silently: the label step after the activation
(``AsDiscreted(argmax)``, the label values written to file) becomes a note in the output's description, and with
``declare_spacing`` the resampling steps (``Orientationd``, ``Spacingd``) become the input axes' voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Processing", "UnsupportedTransformError", "translate_postprocessing", "translate_preprocessing"]

# transforms that load, retype or write; nothing for a bioimage.io tool to do
_NEUTRAL = ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "CastToTyped", "ToTensord", "SaveImaged", "Identityd")
_GEOMETRY = ("Orientationd", "Spacingd")
# label functions of this package that turn the argmax into the values written to file
_LABEL_FUNCS = {"isbi_label_from_membrane": "written to file as 0 = membrane (class 1), 255 = cell (ISBI 2012)"}


class UnsupportedTransformError(ValueError):
    """A bundle transform with no bioimage.io equivalent; the message names it and says what to do."""


@dataclass
class Processing:
    """The translation of one bundle's processing.

    Attributes:
        ops: the spec's operation descriptions, in order.
        spacing: voxel size per spatial axis in the network's (MONAI) order, from ``Spacingd`` (``None`` without).
        notes: sentences for the tensor's description (label steps left to the tool, resampling to do first).
        activation: ``"softmax"``, ``"sigmoid"`` or ``None`` (postprocessing only).
        applied: the bundle transforms that ``ops`` reproduce (postprocessing only; the test output runs them).
    """

    ops: list[Any] = field(default_factory=list)
    spacing: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)
    activation: str | None = None
    applied: list[Any] = field(default_factory=list)


def _keys(t: Any) -> tuple[str, ...]:
    return tuple(str(k) for k in getattr(t, "keys", ()))


def _per_key(t: Any, attr: str, key: str) -> Any:
    """A dictionary transform's setting for ``key`` (MONAI keeps one entry per key, e.g. ``Activationsd.softmax``)."""
    values = getattr(t, attr)
    return values[_keys(t).index(key)] if isinstance(values, (list, tuple)) else values


def _unsupported(t: Any, where: str, why: str, fix: str) -> UnsupportedTransformError:
    return UnsupportedTransformError(
        f"{type(t).__name__} in the bundle's {where} has no bioimage.io equivalent: {why}. {fix}"
    )


def _axes(spatial: Sequence[str], channel_wise: bool) -> list[str]:
    """The axes one statistic is computed over: per sample (never ``batch``), all channels unless channel-wise."""
    return [*([] if channel_wise else ["channel"]), *spatial]


def _scale_linear(gain: float, offset: float) -> list[Any]:
    from bioimageio.spec.model import v0_5

    if gain == 1.0 and offset == 0.0:
        return []
    return [v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=float(gain), offset=float(offset)))]


def _clip(lo: float, hi: float) -> Any:
    from bioimageio.spec.model import v0_5

    return v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=float(lo), max=float(hi)))


def _scale_range(lower: float, upper: float, axes: list[str]) -> Any:
    from bioimageio.spec.model import v0_5

    return v0_5.ScaleRangeDescr(
        kwargs=v0_5.ScaleRangeKwargs(
            axes=[v0_5.AxisId(a) for a in axes], min_percentile=float(lower), max_percentile=float(upper)
        )
    )


def translate_preprocessing(
    transforms: Sequence[Any], image_key: str, spatial_axes: Sequence[str], declare_spacing: bool = False
) -> Processing:
    """The bundle's preprocessing transforms (flattened, loader included) as bioimage.io preprocessing.

    Args:
        transforms: MONAI dictionary transforms in order.
        image_key: the network's input key (``"image"``); transforms on other keys are ignored.
        spatial_axes: the package's spatial axis ids (``["y", "x"]``, ``["z", "y", "x"]``).
        declare_spacing: turn ``Orientationd``/``Spacingd`` into the axes' voxel size and a note (the user resamples
            first) instead of raising.

    Raises:
        UnsupportedTransformError: a transform the spec cannot express, named.
    """
    from bioimageio.spec.model import v0_5

    out = Processing(ops=[v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))])
    where = "preprocessing"
    for t in transforms:
        name = type(t).__name__
        if image_key not in _keys(t):
            continue
        if name in _NEUTRAL:
            continue
        if name in _GEOMETRY:
            if not declare_spacing:
                raise _unsupported(
                    t,
                    where,
                    "bioimage.io tools do not resample images",
                    "Export with --declare-spacing (bundle config: bioimageio_declare_spacing) to declare the voxel "
                    "size the network expects on the input axes instead; users then resample their images to it "
                    "first.",
                )
            if name == "Spacingd":
                pixdim = getattr(t.spacing_transform, "pixdim", None)
                out.spacing = tuple(float(p) for p in pixdim)
                out.notes.append(
                    "Resample the image to the declared voxel size ("
                    + " x ".join(f"{p:g}" for p in reversed(out.spacing))
                    + " mm, "
                    + ", ".join(spatial_axes)
                    + ") before running the model: the bundle's Spacingd does this, bioimage.io tools do not."
                )
            else:
                codes = str(getattr(getattr(t, "ornt_transform", None), "axcodes", None) or "")
                order = ", ".join(f"{a} = {c}" for a, c in zip(spatial_axes, reversed(codes)))
                out.notes.append(
                    f"The bundle reorients volumes to {codes or 'its orientation'} (Orientationd): give the array in "
                    f"that voxel order ({order or 'as the bundle reads it'})."
                )
            continue
        if name == "ScaleIntensityd":
            s = t.scaler
            axes = _axes(spatial_axes, bool(s.channel_wise))
            if s.minv is None and s.maxv is None:
                out.ops += _scale_linear(1.0 + float(s.factor or 0.0), 0.0)
                continue
            if s.minv is None or s.maxv is None:
                raise _unsupported(t, where, "only one of minv/maxv is set", "Set both minv and maxv.")
            out.ops.append(_scale_range(0.0, 100.0, axes))
            out.ops += _scale_linear(float(s.maxv) - float(s.minv), float(s.minv))
            continue
        if name == "ScaleIntensityRangePercentilesd":
            s = t.scaler
            if s.relative:
                raise _unsupported(t, where, "relative=True", "Use relative=False.")
            out.ops.append(_scale_range(float(s.lower), float(s.upper), _axes(spatial_axes, bool(s.channel_wise))))
            if s.b_min is not None and s.b_max is not None:
                out.ops += _scale_linear(float(s.b_max) - float(s.b_min), float(s.b_min))
                if s.clip:
                    out.ops.append(_clip(s.b_min, s.b_max))
            continue
        if name == "ScaleIntensityRanged":
            s = t.scaler
            if s.b_min is None or s.b_max is None:
                raise _unsupported(t, where, "b_min/b_max are None", "Set both b_min and b_max.")
            gain = (float(s.b_max) - float(s.b_min)) / (float(s.a_max) - float(s.a_min))
            out.ops += _scale_linear(gain, float(s.b_min) - float(s.a_min) * gain)
            if s.clip:
                out.ops.append(_clip(min(s.b_min, s.b_max), max(s.b_min, s.b_max)))
            continue
        if name == "NormalizeIntensityd":
            n = t.normalizer
            if n.nonzero:
                raise _unsupported(
                    t, where, "nonzero=True (statistics of the nonzero voxels only)", "Use nonzero=False."
                )
            if n.subtrahend is None and n.divisor is None:
                out.ops.append(
                    v0_5.ZeroMeanUnitVarianceDescr(
                        kwargs=v0_5.ZeroMeanUnitVarianceKwargs(
                            axes=[v0_5.AxisId(a) for a in _axes(spatial_axes, bool(n.channel_wise))]
                        )
                    )
                )
                continue
            if isinstance(n.subtrahend, (int, float)) and isinstance(n.divisor, (int, float)):
                out.ops.append(
                    v0_5.FixedZeroMeanUnitVarianceDescr(
                        kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(mean=float(n.subtrahend), std=float(n.divisor))
                    )
                )
                continue
            raise _unsupported(
                t, where, "subtrahend/divisor given per channel or only one of them", "Give both as numbers."
            )
        if name == "PlannedNormalized":  # monai_unet.transforms: one scheme per channel, or one for all
            out.ops += _planned(t, where, spatial_axes)
            continue
        raise _unsupported(
            t,
            where,
            "the spec's preprocessing has ensure_dtype, scale_linear, scale_range, clip, zero_mean_unit_variance "
            "(fixed or per sample), binarize and sigmoid",
            "Express the step with ScaleIntensityd, ScaleIntensityRangePercentilesd, ScaleIntensityRanged or "
            "NormalizeIntensityd, or drop it, in the bundle's inference config.",
        )
    out.ops.append(v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")))
    return out


def _planned(t: Any, where: str, spatial_axes: Sequence[str]) -> list[Any]:
    """``PlannedNormalized``'s scheme as operations: the same scheme for every channel, statistics per channel."""
    from bioimageio.spec.model import v0_5

    schemes = [dict(s) for s in getattr(getattr(t, "normalizer", None), "schemes", None) or []]
    if not schemes or any(s != schemes[0] for s in schemes):
        raise _unsupported(
            t, where, f"its channels are normalised by different schemes ({schemes})", "Use one scheme for all."
        )
    s = schemes[0]
    axes = [v0_5.AxisId(a) for a in spatial_axes]  # per channel, as the scheme is applied
    kind = s.get("scheme")
    if kind == "none":
        return []
    if kind == "percentile_range":
        ops = [_scale_range(float(s["lower"]), float(s["upper"]), list(spatial_axes))]
        if s.get("b_min") is not None and s.get("b_max") is not None:
            ops += _scale_linear(float(s["b_max"]) - float(s["b_min"]), float(s["b_min"]))
            if s.get("clip"):
                ops.append(_clip(s["b_min"], s["b_max"]))
        return ops
    if kind == "zscore" and not s.get("nonzero"):
        return [v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=axes))]
    if kind == "ct":
        lo, hi = (float(v) for v in s["clip"])
        return [
            _clip(lo, hi),
            v0_5.FixedZeroMeanUnitVarianceDescr(
                kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(mean=float(s["mean"]), std=float(s["std"]))
            ),
        ]
    raise _unsupported(
        t, where, f"scheme {s} (a z-score inside the nonzero mask has no equivalent)", "Use nonzero: false."
    )


def translate_postprocessing(transforms: Sequence[Any], pred_key: str = "pred", geometry: bool = False) -> Processing:
    """The bundle's postprocessing transforms as bioimage.io postprocessing of the network's output.

    The package outputs what the activation gives (probabilities per class for ``softmax``); a following
    ``AsDiscreted(argmax=True)`` and this package's label functions are the label step a tool does itself (ilastik,
    deepImageJ and napari show the probability maps and threshold or take the argmax), so they become a note.

    Args:
        transforms: MONAI dictionary transforms in order.
        pred_key: the prediction's key; transforms on other keys are ignored.
        geometry: the preprocessing resampled (declared spacing), so ``Invertd`` is the inverse of that resampling.

    Raises:
        UnsupportedTransformError: a transform the spec cannot express, named.
    """
    from bioimageio.spec.model import v0_5

    out = Processing()
    where = "postprocessing"
    labelled = False
    for t in transforms:
        name = type(t).__name__
        if pred_key not in _keys(t):
            continue
        if name in _NEUTRAL:
            continue
        if name == "Activationsd":
            softmax, sigmoid = bool(_per_key(t, "softmax", pred_key)), bool(_per_key(t, "sigmoid", pred_key))
            other = _per_key(t, "other", pred_key)
            if other is not None or (softmax and sigmoid) or labelled or out.activation is not None:
                raise _unsupported(
                    t,
                    where,
                    "only one softmax or sigmoid, before any label step, is expressible",
                    "Use Activationsd(softmax=True) or Activationsd(sigmoid=True) once.",
                )
            out.applied.append(t)
            if softmax:
                out.ops.append(v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel"))))
                out.activation = "softmax"
            elif sigmoid:
                out.ops.append(v0_5.SigmoidDescr())
                out.activation = "sigmoid"
            continue
        if name == "AsDiscreted":
            argmax = bool(_per_key(t, "argmax", pred_key))
            threshold, onehot = _per_key(t, "threshold", pred_key), _per_key(t, "to_onehot", pred_key)
            if _per_key(t, "rounding", pred_key) is not None:
                onehot = onehot or "rounding"
            if argmax and threshold is None and onehot is None:
                labelled = True
                out.notes.append(
                    "The label image is the argmax over the channels (monai-unet predict writes it; in a tool, "
                    "take the channel of highest probability)."
                )
                continue
            if threshold is not None and not argmax and onehot is None and not labelled:
                out.ops.append(v0_5.BinarizeDescr(kwargs=v0_5.BinarizeKwargs(threshold=float(threshold))))
                out.applied.append(t)
                labelled = True
                continue
            raise _unsupported(
                t,
                where,
                "only argmax (left to the tool) or a threshold (binarize) is expressible",
                "Use AsDiscreted(argmax=True) or AsDiscreted(threshold=...).",
            )
        if name == "Lambdad" and labelled:
            func = _per_key(t, "func", pred_key)
            note = _LABEL_FUNCS.get(getattr(func, "__name__", ""))
            if note is not None and getattr(func, "__module__", "").startswith("monai_unet."):
                out.notes.append(f"Labels are {note}.")
                continue
        if name == "Invertd" and geometry:
            out.notes.append("monai-unet predict resamples the labels back to the input's grid (Invertd).")
            continue
        if name == "Invertd":
            continue  # nothing to invert: the preprocessing has no geometric step (checked by the caller)
        raise _unsupported(
            t,
            where,
            "the spec's postprocessing has softmax, sigmoid, binarize, clip, scaling and normalisation",
            "Keep the bundle's postprocessing to Activationsd, AsDiscreted(argmax) and this package's label "
            "functions, or drop the step in the bundle's inference config.",
        )
    out.ops.append(v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")))
    return out
