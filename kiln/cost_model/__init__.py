"""Hardware cost model: profiles, roofline costs, calibration, measurement, learned correction.

Passes read it from ``PassContext.cost_model``; `kiln cost` and `kiln calibrate` expose it.
"""

from kiln.cost_model.hardware import HardwareProfile, MemoryLevel, preset
from kiln.cost_model.model import Comparison, CostModel, ModelEstimate
from kiln.cost_model.roofline import Estimate

__all__ = ["Comparison", "CostModel", "Estimate", "HardwareProfile", "MemoryLevel", "ModelEstimate", "preset"]
