"""The part of the cost model that runs a backend: per-kernel profiles (`profiling`), machine
calibration (`calibration`, `microbench`), ONNX Runtime's lowered graph (`lowering`) and measured
choices (`choices`). Nothing else in `kiln.cost_model` imports a runtime."""
