"""Facts about this CPU read from the OS: model, flags, caches, usable cores.

Linux only reads (/proc/cpuinfo, /sys/devices/system/cpu); elsewhere the functions return empty
values and calibration falls back to presets.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CacheLevel", "caches", "cpu_flags", "cpuinfo", "cpu_facts"]

#: CPU flags that matter for kernels (amx: any amx_* flag).
FLAGS_OF_INTEREST = ("fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx")


def cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> set[str]:
    """Every flag /proc/cpuinfo lists for the first CPU."""
    return set(cpuinfo().get("flags", "").split())


@dataclass(frozen=True)
class CacheLevel:
    """One data (or unified) cache of CPU 0: its level, size, and how many CPUs share it."""

    level: int
    size_bytes: int
    shared_by: int


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            return int(text[:-1]) * factor
    return int(text)


def _count_cpus(cpu_list: str) -> int:
    count = 0
    for part in cpu_list.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return max(count, 1)


def caches() -> list[CacheLevel]:
    """Data and unified caches of CPU 0 from sysfs, smallest level first (empty when unknown)."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    found: list[CacheLevel] = []
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            if kind not in ("Data", "Unified"):
                continue
            found.append(
                CacheLevel(
                    level=int((index / "level").read_text()),
                    size_bytes=_parse_size((index / "size").read_text()),
                    shared_by=_count_cpus((index / "shared_cpu_list").read_text()),
                )
            )
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda c: c.level)


def cpu_facts() -> dict[str, Any]:
    """CPU model, vendor, family, clock, cores, hypervisor, flags of interest and caches."""
    cpu = cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    mhz = cpu.get("cpu MHz")
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_vendor": cpu.get("vendor_id", ""),
        "cpu_family": int(cpu["cpu family"]) if cpu.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(cpu["model"]) if cpu.get("model", "").isdigit() else None,
        "cpu_mhz": float(mhz) if mhz else None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "hypervisor": "hypervisor" in flags,
        "flags": {
            name: (any(f.startswith("amx") for f in flags) if name == "amx" else name in flags)
            for name in FLAGS_OF_INTEREST
        },
        "caches": [{"level": c.level, "size_bytes": c.size_bytes, "shared_by": c.shared_by} for c in caches()],
    }
