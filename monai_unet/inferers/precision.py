"""The number format the network computes in during inference: fp32, or bf16/fp16 under ``torch.autocast``.

Mixed precision halves the bytes each activation moves and, where the hardware computes the narrow type natively
(CPUs with AVX512-BF16 or AMX, every recent GPU), the time of each multiply-add. The stitched output and the
probabilities stay float32 whatever the network computes in; only the convolutions round to the narrow type.

Whether a narrow type pays, and whether it leaves the segmentation as it was, depends on the machine and on the
trained model, so ``"auto"`` does not guess: it picks a narrow type only where a *precision check* of the model,
measured on this device family by ``scripts/bench_precision.py --write-check``, says that it met :data:`GOAL`
(at least 1.8 times fp32's speed, under 0.1% of the labels changed, the task metrics unchanged to the third
decimal); everywhere else it runs fp32 and says why. A check is a list of entries, one per device family::

    [{"device_family": "cpu GenuineIntel amx_bf16", "device": "Intel(R) Xeon(R) ...",
      "precisions": {"bf16": {"speedup": 2.1, "labels_changed": 0.0003, "metric_change": 0.0001}, ...}}]
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "GOAL",
    "PRECISIONS",
    "autocast_for",
    "check_entry",
    "cpu_computes_bf16",
    "cpu_model",
    "device_family",
    "meets_goal",
    "precision_verdict",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_LOG = logging.getLogger(__name__)

#: what a narrow precision must achieve against fp32 before ``"auto"`` picks it (issue #18): speed-up at least
#: ``speedup``; the share of output labels that differ from fp32's below ``labels_changed``; every task metric
#: (pixel error, Rand error, Dice) within ``metric_change`` of fp32's (unchanged to the third decimal)
GOAL = {"speedup": 1.8, "labels_changed": 1e-3, "metric_change": 5e-4}


@functools.cache
def _cpuinfo() -> dict[str, Any]:
    """The first processor's ``model name``, ``vendor_id`` and ``flags`` from Linux's ``/proc/cpuinfo`` (empty
    where that cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "vendor_id", "flags") and key not in info:
            info[key] = set(value.split()) if key == "flags" else value.strip()
        if not line.strip() and info:  # the end of the first processor's block
            break
    return info


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of Linux's
    ``/proc/cpuinfo``); ``False`` where that cannot be read."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo().get("flags", set()))


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    return str(_cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU")


def device_family(device: torch.device | str) -> str:
    """The family a precision check holds for: on a CPU its vendor and its native bfloat16 instructions
    (``"cpu GenuineIntel amx_bf16"``, ``"cpu AuthenticAMD avx512_bf16"``, ``"cpu ... no native bf16"``), on CUDA the
    GPU's name. Speed-ups differ most between these (AMX multiplies bf16 matrices, AVX512-BF16 dot products)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    flags = _cpuinfo().get("flags", set())
    isa = next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), "no native bf16")
    return f"cpu {_cpuinfo().get('vendor_id') or platform.machine() or 'unknown'} {isa}"


def meets_goal(result: Mapping[str, float], goal: Mapping[str, float] = GOAL) -> bool:
    """Whether one precision's measurement (``speedup``, ``labels_changed``, ``metric_change``) meets ``goal``."""
    try:
        return (
            float(result["speedup"]) >= goal["speedup"]
            and float(result["labels_changed"]) < goal["labels_changed"]
            and abs(float(result["metric_change"])) < goal["metric_change"]
        )
    except (KeyError, TypeError, ValueError):
        return False


def check_entry(
    measured: Mapping[str, Mapping[str, float]], device: torch.device | str, **about: Any
) -> dict[str, Any]:
    """A precision check entry for ``device``'s family: per precision its ``speedup`` (fp32 time over its time),
    ``labels_changed`` (share of output labels that differ from fp32's) and ``metric_change`` (the largest absolute
    change of a task metric), each marked ``passed`` against :data:`GOAL`; ``about`` (weights, data, versions) is
    kept beside them."""
    precisions = {
        p: {
            "speedup": float(m["speedup"]),
            "labels_changed": float(m["labels_changed"]),
            "metric_change": float(m["metric_change"]),
            "passed": meets_goal(m),
        }
        for p, m in measured.items()
        if p != "fp32"
    }
    device = torch.device(device)
    name = cpu_model() if device.type == "cpu" else device_family(device)
    return {
        "device_family": device_family(device),
        "device": name,
        "goal": dict(GOAL),
        "precisions": precisions,
        **about,
    }


def _entry_for(check: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None, family: str) -> Mapping | None:
    if check is None:
        return None
    entries = [check] if isinstance(check, Mapping) else list(check)
    return next((e for e in entries if isinstance(e, Mapping) and e.get("device_family") == family), None)


def precision_verdict(
    check: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None, precision: str, device: torch.device | str
) -> tuple[bool, str]:
    """``(passed, why)``: whether ``check`` (a list of entries, or one) holds a measurement of ``precision`` on
    ``device``'s family that meets :data:`GOAL` (judged again here from the numbers, not from a stored flag)."""
    family = device_family(device)
    entry = _entry_for(check, family)
    if entry is None:
        return False, (
            f"no precision check of this model on {family} (scripts/bench_precision.py --write-check records one)"
        )
    m = (entry.get("precisions") or {}).get(precision)
    if m is None:
        return False, f"the precision check on {family} did not measure {precision}"
    try:
        numbers = (
            f"{precision} ran {float(m['speedup']):.2f}x fp32 and changed {1e4 * float(m['labels_changed']):.1f} "
            f"labels in 10,000, metrics by {float(m['metric_change']):.4f}"
        )
    except (KeyError, TypeError, ValueError):
        return False, f"the precision check on {family} holds no usable numbers for {precision}"
    goal = f"goal >= {GOAL['speedup']}x, < {1e4 * GOAL['labels_changed']:.0f} in 10,000, < {GOAL['metric_change']}"
    if meets_goal(m):
        return True, f"the precision check on {family}: {numbers} ({goal}: met)"
    return False, f"the precision check on {family}: {numbers} ({goal}: not met)"


def resolve_precision(
    precision: str, device: torch.device | str, check: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """``(precision, why)`` with ``"auto"`` resolved for ``device``: a narrow type (bf16 on a CPU that computes it
    natively; bf16, else fp16, on CUDA) only where ``check`` (see the module docstring) says that it met
    :data:`GOAL` for this model on this device family, the fastest such one; fp32 everywhere else.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = torch.device(device)
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cuda":
        candidates = ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    elif device.type == "cpu":
        if not cpu_computes_bf16():
            return "fp32", "auto: the CPU has no native bfloat16 (no AVX512-BF16 or AMX)"
        candidates = ("bf16",)
    else:
        return "fp32", f"auto: no mixed precision on {device.type}"
    verdicts = {p: precision_verdict(check, p, device) for p in candidates}
    passed = [p for p, (ok, _) in verdicts.items() if ok]
    if not passed:
        return "fp32", f"auto: fp32, because {verdicts[candidates[0]][1]}"
    entry = _entry_for(check, device_family(device))
    best = max(passed, key=lambda p: float(entry["precisions"][p]["speedup"]))  # type: ignore[index]
    return best, f"auto: {best}, because {verdicts[best][1]}"


@contextlib.contextmanager
def autocast_for(
    precision: str,
    device: torch.device | str,
    check: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """Run the block under ``torch.autocast`` in ``precision`` (resolved for ``device`` and ``check``, see
    :func:`resolve_precision`); yields the precision."""
    device = torch.device(device)
    resolved, why = resolve_precision(precision, device, check)
    if precision == "auto":
        _LOG.info("precision %s on %s (%s)", resolved, device, why)
    if resolved == "fp32":
        yield resolved
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[resolved]):
        yield resolved
