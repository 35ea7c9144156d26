"""Kernel-fusion rules, one file each (a `FusionRule` subclass); a rule is registered by one
line in `FUSION_RULES` (its class and its snake_case name, which the report shows)."""

from kiln.passes.fusion.rules.erf_gelu import ErfGelu

FUSION_RULES = (
    (ErfGelu, "erf_gelu"),
)
