"""The `kiln` command: optimize and inspect models."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kiln.errors import KilnError
from kiln.report.render import format_bytes

console = Console()
if not console.is_terminal:
    # Logs and pipes have no width; keep report rows on one line instead of truncating them.
    console = Console(width=160)
err_console = Console(stderr=True)


def cmd_optimize(args: argparse.Namespace) -> int:
    from kiln.api import optimize

    sample_inputs = None
    if args.sample_inputs:
        import numpy as np

        with np.load(args.sample_inputs, allow_pickle=False) as data:
            sample_inputs = {name: data[name] for name in data.files}
    optimized = optimize(args.model, level=args.level, validate=not args.no_validate, dump_ir=args.dump_ir,
                         sample_inputs=sample_inputs)
    path = optimized.save(args.output)
    console.print(optimized.report)
    if args.report:
        Path(args.report).write_text(optimized.report.to_json())
        console.print(f"Report written to {args.report}")
    console.print(f"Optimized model written to {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from kiln.ir.analysis import ModelSummary
    from kiln.ir.capture import load

    summary = ModelSummary.of(load(args.model))
    console.print(f"[bold]{args.model}[/bold]  IR v{summary.ir_version}  opsets "
                  + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(summary.opsets.items()))
                  + (f"  producer {summary.producer}" if summary.producer else ""))
    io_table = Table(title="inputs and outputs")
    for column in ("kind", "name", "dtype", "shape"):
        io_table.add_column(column)
    for kind, values in (("input", summary.inputs), ("output", summary.outputs)):
        for v in values:
            io_table.add_row(kind, v.name, v.dtype, v.shape_text())
    console.print(io_table)
    ops = Table(title=f"{summary.node_count} nodes, {format_bytes(summary.parameter_bytes)} of parameters")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary.op_histogram.items():
        ops.add_row(op, str(count))
    console.print(ops)
    return 0


def cmd_bench(bench_args: list[str]) -> int:
    """Run the side-by-side benchmarks, which live in the repository (not in the wheel)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise KilnError(
            "kiln bench needs a kiln source checkout (benchmarks/ is not installed with the package): "
            "clone the repository, run `make test` once, then `kiln bench` or `python -m benchmarks run`."
        )
    return subprocess.call([sys.executable, "-m", "benchmarks", "run", *bench_args], cwd=root)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="kiln: a graph compiler for trained models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="optimize an ONNX model and print the report")
    opt.add_argument("model", help="input .onnx file")
    opt.add_argument("-o", "--output", required=True, help="output .onnx file")
    opt.add_argument("--level", type=int, default=1, help="optimization level (default 1)")
    opt.add_argument("--report", help="also write the report as JSON to this file")
    opt.add_argument("--no-validate", action="store_true", help="skip numeric validation")
    opt.add_argument("--sample-inputs", metavar="NPZ",
                     help="validate on these inputs (.npz keyed by input name) instead of random ones")
    opt.add_argument("--dump-ir", help="write the model after every pass into this folder")
    opt.set_defaults(func=cmd_optimize)
    # `kiln bench ARGS` hands ARGS to `python -m benchmarks run` untouched (see main).
    sub.add_parser("bench", help="run the side-by-side benchmarks: kiln bench [--quick] [--models ...] ...")
    ins = sub.add_parser("inspect", help="show inputs, outputs, op histogram and parameter bytes")
    ins.add_argument("model", help=".onnx file")
    ins.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        try:
            return cmd_bench(argv[1:])
        except KilnError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc}")
            return 2
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KilnError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
