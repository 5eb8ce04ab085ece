"""Named input channels: which series of a DICOM study, or which file of an nnU-Net case, is which channel.

A bundle declares its input channels by name (``metadata.json``: ``inputs.image.channel_def``) with a pattern each,
for example ``{"T1post": "*T1post*", "FLAIR": "*FLAIR*"}``. A DICOM study folder holds one folder per series; a
series is a channel's when its folder name or its SeriesDescription matches the channel's pattern (shell-style,
case-insensitive; several patterns may be given as a list). nnU-Net names one file per channel,
``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...: the channels in the order of their four-digit index.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "ChannelError",
    "ChannelPatterns",
    "match_channels",
    "match_study_channels",
    "nnunet_case_channels",
    "parse_channel_options",
    "series_description",
    "split_channel_name",
]

ChannelPatterns = Mapping[str, "str | Sequence[str]"]
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


class ChannelError(ValueError):
    """A study or case lacks a channel, or has several series for one (the message names what was found)."""


def series_description(folder: str | os.PathLike) -> str:
    """The SeriesDescription of the first readable DICOM file in ``folder`` (``""`` when there is none)."""
    from monai_unet.io.dicom import read_header

    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            ds = read_header(path)
            if ds is not None:
                return str(getattr(ds, "SeriesDescription", "") or "")
    return ""


def _patterns(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _matches(name: str, description: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatch(name.lower(), p.lower()) or (description and fnmatch.fnmatch(description.lower(), p.lower()))
        for p in patterns
    )


def match_channels(candidates: Sequence[tuple[str, str]], channels: ChannelPatterns, where: str) -> list[int]:
    """Which candidate is each channel's: ``candidates`` are ``(name, description)`` pairs (a series folder's name
    and its SeriesDescription); a channel's pattern must match exactly one, by name or by description.

    Raises:
        ChannelError: a channel matches no candidate, or several; the message names ``where``, the channel and
            every candidate found.
    """
    out = []
    for channel, value in channels.items():
        patterns = _patterns(value)
        hits = [i for i, (name, description) in enumerate(candidates) if _matches(name, description, patterns)]
        if len(hits) != 1:
            found = ", ".join(n + (f" ({d})" if d and d != n else "") for n, d in candidates)
            what = "no series" if not hits else f"{len(hits)} series ({', '.join(candidates[i][0] for i in hits)})"
            raise ChannelError(
                f"{where}: {what} for channel {channel!r} (pattern {', '.join(patterns)}); series found: "
                f"{found or 'none'}. Give a pattern that picks exactly one, e.g. --channel {channel}='*{channel}*'."
            )
        out.append(hits[0])
    return out


def match_study_channels(
    study: str | os.PathLike, channels: ChannelPatterns, label: str | Sequence[str] | None = None
) -> tuple[list[str], str | None]:
    """The series folder of each channel of a DICOM study (in the order of ``channels``), and the label's.

    Args:
        study: the study folder, holding one folder per series.
        channels: channel name -> pattern(s) matched against the series folder name and its SeriesDescription
            (read only when some pattern matches no folder name).
        label: pattern(s) of the label series, or ``None`` (inference).

    Raises:
        ChannelError: a channel (or the label) matches no series, or several; the message names the study and the
            channel and lists the series found.
    """
    study = Path(study)
    series = [p for p in sorted(study.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    wanted = dict(channels)
    if label is not None:
        wanted["label"] = label
    candidates = [(p.name, "") for p in series]
    try:
        picked = match_channels(candidates, wanted, f"Study {study}")
    except ChannelError:  # the folder names do not say: ask the headers
        candidates = [(p.name, series_description(p)) for p in series]
        picked = match_channels(candidates, wanted, f"Study {study}")
    paths = [str(series[i]) for i in picked]
    return (paths[:-1], paths[-1]) if label is not None else (paths, None)


def split_channel_name(stem: str) -> tuple[str, int | None]:
    """``("CASE", 1)`` for nnU-Net's ``CASE_0001``; ``(stem, None)`` for a name without a channel index."""
    m = _NNUNET_CHANNEL.match(stem)
    return (m["case"], int(m["index"])) if m else (stem, None)


def nnunet_case_channels(
    files: Mapping[str, Path], expected: int | None = None, cases: Sequence[str] | None = None
) -> dict[str, list[Path]]:
    """Group nnU-Net channel files (``CASE_0000`` ... by name without extension) into cases, channels in order.

    Names without a four-digit channel index are single-channel cases of their own; so is a name that is itself
    one of ``cases`` (the label names, when known), or whose ``CASE`` part is not.

    Raises:
        ChannelError: a case whose channel indices are not 0..N-1, or whose count differs from ``expected`` (or
            from the other cases when ``expected`` is ``None``).
    """
    known = set(cases) if cases is not None else None
    grouped: dict[str, dict[int, Path]] = {}
    for stem, path in files.items():
        case, index = split_channel_name(stem)
        if index is None or (known is not None and (stem in known or case not in known)):
            case, index = stem, 0
        if index in grouped.setdefault(case, {}):
            raise ChannelError(f"Case {case!r} has two files for channel {index}: {grouped[case][index]} and {path}.")
        grouped[case][index] = path
    out: dict[str, list[Path]] = {}
    counts = {len(c) for c in grouped.values()}
    for case, by_index in sorted(grouped.items()):
        if sorted(by_index) != list(range(len(by_index))):
            raise ChannelError(
                f"Case {case!r} has channel files {sorted(by_index)}; nnU-Net numbers channels 0000, 0001, ... "
                "without gaps."
            )
        want = expected if expected is not None else (max(counts) if len(counts) > 1 else None)
        if want is not None and len(by_index) != want:
            raise ChannelError(
                f"Case {case!r} has {len(by_index)} channel file(s) ({', '.join(p.name for p in by_index.values())}) "
                f"but {want} are expected (the other cases, or the bundle's channels)."
            )
        out[case] = [by_index[i] for i in range(len(by_index))]
    return out


def parse_channel_options(options: Sequence[str], defaults: ChannelPatterns | None = None) -> dict[str, list[str]]:
    """``NAME=PATTERN`` command-line options over ``defaults``: a named channel's patterns are replaced; new names
    are an error (the network's channels are fixed by the bundle)."""
    out = {k: list(_patterns(v)) for k, v in (defaults or {}).items()}
    for option in options:
        name, sep, pattern = option.partition("=")
        if not sep or not name.strip() or not pattern.strip():
            raise ValueError(f"--channel needs NAME=PATTERN, got {option!r}.")
        if defaults and name.strip() not in out:
            raise ValueError(f"--channel {name.strip()!r}: the bundle's channels are {list(out)}.")
        out[name.strip()] = [p.strip() for p in pattern.split("|")]
    return out
