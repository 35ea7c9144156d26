"""Peak memory of kiln on a model larger than 2 GB (weights in an external-data file).

    .venv/bin/python benchmarks/large_model_memory.py [--gib 2.5] [--dir out/large]

Builds a chain of MatMuls whose weights total --gib GiB, then, in a fresh process, loads it with
kiln, runs level-1 optimization (validation off: running it would load the weights into ONNX
Runtime, a second copy by design), saves it, and prints peak RSS against the weight bytes. One
copy of the weights (memory-mapped pages) is the floor; two copies would show as a ratio near 2.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build(folder: Path, gib: float, width: int = 8192) -> tuple[Path, int]:
    """A MatMul chain with float32 [width, width] weights written straight to a data file."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    per_weight = width * width * 4
    count = max(1, int(gib * (1 << 30) // per_weight))
    data_path = folder / "big.onnx.data"
    initializers, nodes = [], []
    rng = np.random.default_rng(0)
    with open(data_path, "wb") as f:
        for i in range(count):
            offset = f.tell()
            # Each weight repeats a 64-row block width/64 times; scale so activations stay finite.
            rows = rng.standard_normal((64, width)).astype(np.float32) / width
            for _ in range(width // 64):  # write in slices, never holding a whole weight twice
                f.write(rows.tobytes())
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_path.name), ("offset", str(offset)), ("length", str(per_weight))):
                e = t.external_data.add()
                e.key, e.value = k, v
            initializers.append(t)
            nodes.append(helper.make_node("MatMul", [f"h{i}" if i else "x", f"W{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"h{count}"], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    path = folder / "big.onnx"
    onnx.save(model, path)
    return path, count * per_weight


def measure(path: str, out: str, external: bool | None = None) -> None:
    """Runs in a fresh process: load, optimize, save; prints JSON with timings and peak RSS."""
    import kiln

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    optimized = kiln.optimize(path, level=1, validate=False)
    t1 = time.perf_counter()
    optimized.save(out, external_data=external)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline_rss": baseline, "peak_rss": peak, "optimize_s": t1 - t0, "save_s": t2 - t1,
                      "nodes": [optimized.report.nodes_before, optimized.report.nodes_after]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.5)
    parser.add_argument("--dir", default="out/large")
    parser.add_argument("--measure", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--external", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure, external=True if args.external else None)
        return 0
    folder = Path(args.dir)
    path, weight_bytes = build(folder, args.gib)
    out = folder / "big.opt.onnx"
    result = subprocess.run([sys.executable, __file__, "--measure", str(path), str(out)],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    saved = out.stat().st_size + (folder / "big.opt.onnx.data").stat().st_size
    extra = figures["peak_rss"] - figures["baseline_rss"]
    print(f"weights {weight_bytes / 2**30:.2f} GiB; saved {saved / 2**30:.2f} GiB "
          f"(data file: {(folder / 'big.opt.onnx.data').exists()})")
    print(f"peak RSS {figures['peak_rss'] / 2**30:.2f} GiB (baseline after imports "
          f"{figures['baseline_rss'] / 2**30:.2f} GiB); growth / weights = {extra / weight_bytes:.2f}")
    print(f"optimize {figures['optimize_s']:.1f} s, save {figures['save_s']:.1f} s, nodes {figures['nodes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
