"""Per-channel intensity normalisation as a plan states it (``monai-unet plan``'s ``normalization`` key).

A scheme per input channel, given in the bundle config, each done by MONAI's own transforms:

- ``{"scheme": "zscore", "nonzero": false}``: per-image z-score (MONAI ``NormalizeIntensity``), inside the nonzero
  mask when ``nonzero`` (skull-stripped data: the zeros stay 0); nnU-Net's ``ZScoreNormalization``.
- ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``: clip to the dataset's foreground percentiles, then
  ``(x - m) / s`` with the dataset's foreground statistics (``NormalizeIntensity`` with fixed subtrahend and
  divisor); nnU-Net's ``CTNormalization``.
- ``{"scheme": "percentile_range", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": true}``: MONAI
  ``ScaleIntensityRangePercentiles`` (the bundles' recipe without a plan).
- ``{"scheme": "none"}``: unchanged.

One scheme may be given for all channels. Nothing is derived here: every number comes from the config.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRangePercentiles, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["SCHEMES", "PlannedNormalize", "PlannedNormalized", "check_schemes", "normalize_channel"]

SCHEMES = {
    "zscore": {"nonzero": False},
    "ct": {"clip": None, "mean": None, "std": None},
    "percentile_range": {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True},
    "none": {},
}


def check_schemes(schemes: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The schemes as a list of complete dicts (defaults filled in); ``ValueError`` naming a bad one."""
    items = [schemes] if isinstance(schemes, Mapping) else list(schemes)
    if not items:
        raise ValueError("schemes needs one normalisation scheme per channel (or one for all), got none.")
    out = []
    for c, s in enumerate(items):
        if not isinstance(s, Mapping) or s.get("scheme") not in SCHEMES:
            raise ValueError(
                f"normalisation scheme {c} must be a dict with 'scheme' one of {sorted(SCHEMES)}, got {s!r}."
            )
        full = {"scheme": s["scheme"], **SCHEMES[s["scheme"]], **{k: v for k, v in s.items() if k != "scheme"}}
        unknown = set(full) - set(SCHEMES[s["scheme"]]) - {"scheme"}
        if unknown:
            raise ValueError(f"normalisation scheme {c} ({s['scheme']}) has unknown keys {sorted(unknown)}: {s!r}.")
        if s["scheme"] == "ct":
            clip = full["clip"]
            if not (isinstance(clip, Sequence) and len(clip) == 2) or full["mean"] is None or full["std"] is None:
                raise ValueError(f"normalisation scheme {c} (ct) needs 'clip': [lo, hi], 'mean' and 'std', got {s!r}.")
            if float(full["std"]) <= 0 or float(clip[0]) > float(clip[1]):
                raise ValueError(f"normalisation scheme {c} (ct) needs std > 0 and clip lo <= hi, got {s!r}.")
        out.append(full)
    return out


def normalize_channel(channel: torch.Tensor, scheme: Mapping[str, Any]) -> torch.Tensor:
    """Normalise one channel ``(1, *S)`` by a complete scheme (see :func:`check_schemes`); float32 ``(1, *S)``."""
    kind = scheme["scheme"]
    x = channel.float()
    if kind == "zscore":
        return NormalizeIntensity(nonzero=bool(scheme["nonzero"]), dtype=torch.float32)(x)
    if kind == "ct":
        lo, hi = (float(v) for v in scheme["clip"])
        clipped = torch.clamp(x, lo, hi)
        return NormalizeIntensity(subtrahend=float(scheme["mean"]), divisor=float(scheme["std"]))(clipped)
    if kind == "percentile_range":
        return ScaleIntensityRangePercentiles(
            lower=float(scheme["lower"]),
            upper=float(scheme["upper"]),
            b_min=scheme["b_min"],
            b_max=scheme["b_max"],
            clip=bool(scheme["clip"]),
        )(x)
    return x


class PlannedNormalize(Transform):
    """Normalise each channel of a channel-first image by its scheme.

    Args:
        schemes: one scheme per channel, or one for every channel (see the module docstring), e.g. a plan's
            ``normalization``: ``[{"scheme": "zscore", "nonzero": true}]``.

    Input ``(C, *S)`` (numpy or torch, MetaTensor kept); output the same shape as float32.

    Raises:
        ValueError: a bad scheme, or a scheme count other than 1 or ``C``.
    """

    backend = (TransformBackends.TORCH, TransformBackends.NUMPY)

    def __init__(self, schemes: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        self.schemes = check_schemes(schemes)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(img, track_meta=True)
        channels = x.shape[0]
        if len(self.schemes) not in (1, channels):
            raise ValueError(
                f"the image has {channels} channels but {len(self.schemes)} normalisation schemes are given; give one "
                "per channel (the plan's in_channels) or one for all."
            )
        out = torch.empty_like(x, dtype=torch.float32)
        for c in range(channels):
            scheme = self.schemes[c if len(self.schemes) > 1 else 0]
            out[c : c + 1] = torch.as_tensor(normalize_channel(x[c : c + 1], scheme))
        result, *_ = convert_to_dst_type(out, img, dtype=torch.float32)
        return result


class PlannedNormalized(MapTransform):
    """Dictionary version of :class:`PlannedNormalize`.

    Args:
        keys: image keys.
        schemes: see :class:`PlannedNormalize`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = PlannedNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        schemes: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = PlannedNormalize(schemes)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
