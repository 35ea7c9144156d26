"""Roofline plot of a model's kernels (matplotlib, written as PNG; the ``cost`` extra).

x: arithmetic intensity (FLOPs per byte moved); y: attained GFLOP/s (FLOPs over the predicted
time, and over the measured time where a measurement is given). The roof is the fp32 peak and
the bandwidth of every memory level of the profile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kiln.cost_model.hardware import HardwareProfile
from kiln.cost_model.model import ModelEstimate
from kiln.errors import KilnError

__all__ = ["roofline_png"]


def roofline_png(estimate: ModelEstimate, profile: HardwareProfile, path: str | os.PathLike, *,
                 measured_ms: Mapping[str, float] | None = None, title: str = "") -> Path:
    """Draw every kernel with FLOPs of `estimate` on the roofline of `profile`; `measured_ms`
    maps node names to measured milliseconds (drawn as a second series)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise KilnError("The roofline plot needs matplotlib: pip install 'kiln[cost]'.") from exc
    import numpy as np

    points = [(node, e) for node, e in estimate.per_node if e.flops > 0 and e.bytes > 0 and e.ms > 0]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    peak = profile.peak("fp32")
    x = np.logspace(-2, 4, 200)
    for level in profile.memory:
        ax.plot(x, np.minimum(peak, x * level.bandwidth_gbps), lw=1, label=f"{level.name} {level.bandwidth_gbps:.0f} GB/s")
    ax.axhline(peak, color="k", lw=1.5, ls="--", label=f"fp32 peak {peak:.0f} GFLOP/s")
    if points:
        ax.scatter([e.intensity for _, e in points], [e.flops / (e.ms * 1e6) for _, e in points], s=14, alpha=0.6,
                   label="predicted")
        if measured_ms:
            meas = [(e, measured_ms[n.name]) for n, e in points if measured_ms.get(n.name)]
            if meas:
                ax.scatter([e.intensity for e, _ in meas], [e.flops / (ms * 1e6) for e, ms in meas], s=14,
                           marker="x", alpha=0.7, label="measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained GFLOP/s")
    ax.set_title(title or f"roofline on {profile.name}")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
