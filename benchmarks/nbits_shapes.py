"""`python -m benchmarks.nbits_shapes [--rows 1,16,128,1024] [--k 768] [--n 3072]`: each block-wise
weight format's MatMulNBits against the fp32 linear, on ONNX Runtime, at several row counts.

The same measurement `quantize_weights_blockwise` makes per linear shape (kiln's measured-choice
timer: the two forms alternated, rotating order, median of paired ratios), printed as a table so
the row counts where weight-only formats pay on this CPU can be read off at once.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nbits_shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,16,128,1024", help="comma-separated row counts M of the activation")
    parser.add_argument("--k", type=int, default=768, help="the weight's rows (input width)")
    parser.add_argument("--n", type=int, default=3072, help="the weight's columns (output width)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    args = parser.parse_args(argv)

    import kiln
    from kiln.cost_model.machine import cpu_facts
    from kiln.cost_model.measure.choices import MeasuredChoices
    from kiln.passes.quantization.blockwise_weights import NBitsShape, alternatives, block_formats
    from kiln.passes.quantization.config import BLOCK_COMPUTE

    facts = cpu_facts()
    print(f"Machine: {facts.get('cpu_model', 'unknown CPU')} (family {facts.get('cpu_family')} model "
          f"{facts.get('cpu_model_number')}); ORT {args.threads} threads; linear {args.k} -> {args.n} with a bias")
    formats = block_formats((4, 8), (32, 128), BLOCK_COMPUTE)
    oracle = MeasuredChoices(kiln.Target(intra_op_threads=args.threads), cache_path=None)
    print("| rows | fp32 ms | " + " | ".join(f.name for f in formats) + " |")
    print("|---:|---:|" + "---:|" * len(formats))
    for rows in (int(r) for r in args.rows.split(",") if r):
        shape = NBitsShape((rows, args.k), args.k, args.n, True)
        measured = [oracle.measure(f"nbits-shapes {rows} {fmt}", *alternatives(shape, fmt)) for fmt in formats]
        print(f"| {rows} | {measured[0].baseline_ms:.3f} | " + " | ".join(f"{m.ratio:.2f}" for m in measured) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
