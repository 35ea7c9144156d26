"""The `kiln` command: optimize, inspect and price models, calibrate the cost model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.backends.registry import known_backends
from kiln.errors import InputError, KilnError
from kiln.report.model import OptimizationReport
from kiln.report.render import format_bytes, report_renderables
from kiln.report.summary import pass_label

console = Console()
if not console.is_terminal:
    # Logs and pipes have no width; keep report rows on one line instead of truncating them.
    console = Console(width=160)
err_console = Console(stderr=True)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`--input-shape x:1,3,48,192` -> ("x", (1, 3, 48, 192)); the name may itself hold colons."""
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        shape = None
    if not sep or not name or shape is None or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: write an input shape as NAME:D0,D1,... e.g. x:1,3,48,192")
    return name, shape


def parse_dim(text: str) -> tuple[str, int]:
    """`--dim image_width=160` -> ("image_width", 160)."""
    name, sep, size = text.rpartition("=")
    if not sep or not name or not size.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: write a dim as NAME=SIZE, e.g. batch=1")
    return name, int(size)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--input-shape and --dim, shared by the commands that run or price a model."""
    parser.add_argument("--input-shape", type=parse_input_shape, action="append", default=[], metavar="NAME:D0,D1,..",
                        help="bind an input's shape, e.g. x:1,3,48,192 (repeatable); what validation and "
                             "prediction use for symbolic or -1 dims")
    parser.add_argument("--dim", type=parse_dim, action="append", default=[], metavar="NAME=SIZE",
                        help="bind a symbolic dim by name, e.g. image_width=160 (repeatable); unbound dims get "
                             "documented defaults (batch 1, sequence 128, image sides 224, ...)")


def shape_binding_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """input_shapes / dim_values from --input-shape / --dim (a name given twice is an error)."""
    out: dict[str, Any] = {}
    for flag, key, pairs in (("--input-shape", "input_shapes", args.input_shape), ("--dim", "dim_values", args.dim)):
        names = [name for name, _ in pairs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise KilnError(f"{flag} binds {repeated} more than once; give each name once.")
        if pairs:
            out[key] = dict(pairs)
    return out


def load_npz(path: str) -> dict[str, Any]:
    """The arrays of an .npz file by name (`--sample-inputs`); never unpickles."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _optimize_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `kiln optimize` gives `kiln.optimize`."""
    kwargs: dict[str, Any] = {"level": args.level, "validate": not args.no_validate, "dump_ir": args.dump_ir,
                              "measure": args.measure, "fix_shapes": args.fix_shapes, **shape_binding_kwargs(args)}
    if args.explain:
        kwargs["options"] = {"trace_near_misses": True}  # the rules' "no" reasons, for the explanation
    if args.sample_inputs:
        kwargs["sample_inputs"] = load_npz(args.sample_inputs)
    if args.drop_blocks_min_cosine is not None:
        from kiln.passes.approximate.block_dropping import BlockBudget

        kwargs["drop_blocks"] = BlockBudget(min_cosine=args.drop_blocks_min_cosine)
    if args.quantize is not None:
        kwargs["quantize"] = args.quantize
        options: dict[str, Any] = {}  # only what the flags set: QuantConfig keeps its defaults
        if args.activation_range is not None:
            options["activation_range"] = args.activation_range
        if args.migrate_outliers is not None:
            options.update(migrate_outliers=True, migration_sites=args.migrate_outliers)
        if args.no_bias_correction:
            options["bias_correction"] = False
        if args.no_rotation:
            options["rotation_blocks"] = ()
        if args.quantize_min_cosine is not None:
            from kiln.passes.infra.contract import CosineBudget

            options["budget"] = CosineBudget(min_cosine=args.quantize_min_cosine, per_sample=True)
        if options:
            from kiln.passes.quantization.config import SHORTHANDS, QuantConfig

            kwargs["quantize"] = QuantConfig(scheme=SHORTHANDS[args.quantize], **options)  # type: ignore[arg-type]
    elif args.activation_range is not None:
        raise InputError("--activation-range sets how --quantize static-int8 fixes activation ranges; add "
                         "--quantize static-int8 (and --calibration) or drop it.")
    elif args.migrate_outliers is not None:
        raise InputError("--migrate-outliers prepares the linears for --quantize; add --quantize int8 or "
                         "static-int8, or drop it.")
    elif args.no_bias_correction or args.no_rotation or args.quantize_min_cosine is not None:
        flag = ("--no-bias-correction" if args.no_bias_correction else
                "--no-rotation" if args.no_rotation else "--quantize-min-cosine")
        raise InputError(f"{flag} is about --quantize's int8 linears; add --quantize int8 or static-int8 (and "
                         "--calibration) or drop it.")
    if args.calibration:
        kwargs["calibration"] = [load_npz(path) for path in args.calibration]
    if args.backend is not None:
        kwargs["backend"] = args.backend
    if args.threads is not None:
        from kiln.target import Target

        # one thread count for the measurement and, derived from the target, the cost model's prediction
        backend = "onnxruntime" if args.backend in (None, "auto") else args.backend
        kwargs["target"] = Target(backend=backend, intra_op_threads=args.threads)  # type: ignore[arg-type]
    return kwargs


def _strict_failures(report: OptimizationReport) -> list[str]:
    """'name (status: message)' for every pass that failed or was rolled back."""
    return [f"{pass_label(p)} ({p.status}: {p.message})" if p.message else f"{pass_label(p)} ({p.status})"
            for p in report.passes if p.status in ("failed", "rolled_back")]


def cmd_optimize(args: argparse.Namespace) -> int:
    from kiln.api import optimize

    optimized = optimize(args.model, **_optimize_kwargs(args))
    path = optimized.save(args.output)
    console.print(*report_renderables(optimized.report, explain=args.explain))
    if args.report:
        Path(args.report).write_text(optimized.report.to_json())
        console.print(f"Report written to {args.report}")
    console.print(f"Optimized model written to {path}")
    failures = _strict_failures(optimized.report)
    if args.strict and failures:
        err_console.print(f"[bold red]strict:[/bold red] {len(failures)} pass run(s) failed or were rolled back:")
        for failure in failures:
            err_console.print(f"  {failure}", soft_wrap=True, markup=False)
        return 1
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
            io_table.add_row(kind, escape(v.name), v.dtype, escape(v.shape_text()))  # "[batch, seq]" is not markup
    console.print(io_table)
    ops = Table(title=f"{summary.node_count} nodes, {format_bytes(summary.parameter_bytes)} of parameters")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary.op_histogram.items():
        ops.add_row(op, str(count))
    console.print(ops)
    return 0


_BACKEND_LABEL = {"onnxruntime": "ORT", "openvino": "OpenVINO"}


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from kiln.cost_model.hardware import default_profile_path
    from kiln.cost_model.measure.calibration import calibrate

    output = Path(args.output) if args.output else default_profile_path(args.backend)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("calibrating", total=1)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        profile = calibrate(args.threads, quick=args.quick, progress=progress, backend=args.backend)
    profile.save(output)
    table = Table(title=profile.source)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for precision, value in profile.peak_gflops.items():
        table.add_row(f"peak {precision}", f"{value:,.0f} GFLOP/s")
    for precision, value in profile.gemm_gflops.items():
        table.add_row(f"{_BACKEND_LABEL[profile.backend]} GEMM {precision}", f"{value:,.0f} GFLOP/s")
    for level in profile.memory:
        table.add_row(f"{level.name} ({format_bytes(level.capacity_bytes)})", f"{level.bandwidth_gbps:,.0f} GB/s")
    table.add_row("kernel launch", f"{profile.launch_overhead_us:.2f} us")
    for op_class, value in profile.efficiency.items():
        table.add_row(f"efficiency {op_class}", f"{value:.2f}")
    console.print(table)
    console.print(f"Hardware profile written to {output}")
    return 0


def _cost_feeds(args: argparse.Namespace, model: Any) -> tuple[Any, Any]:
    """(feeds, bound shapes) `kiln cost` prices and measures at: --sample-inputs (checked against
    --input-shape / --dim), else sample inputs at the shapes those bind (defaults for the rest)."""
    from kiln.ir.inputs import make_feeds, random_inputs, shapes_of_feeds
    from kiln.ir.shapes import ShapeBinding, bind_shapes

    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    binding = ShapeBinding(**shape_binding_kwargs(args))
    bound = bind_shapes(inputs, binding)
    if args.sample_inputs:
        feeds = make_feeds(inputs, (), load_npz(args.sample_inputs))
        return feeds, shapes_of_feeds(inputs, feeds, binding, bound, "sample_inputs")
    return random_inputs(inputs, shapes=bound), bound


def _openvino_cost(args: argparse.Namespace, cost_model: Any, model: Any, feeds: Any,
                   dims: Any) -> tuple[Any, dict[str, float], float | None]:
    """(estimate, measured ms per kernel, measured model ms) for `kiln cost --backend openvino`:
    the kernels of one profiled compilation are both what is priced and, with --measure, what is
    timed; the whole model is timed on a compilation without counters."""
    from kiln.backends.openvino import OpenVINOExecutable
    from kiln.backends.openvino.kernels import runtime_kernels
    from kiln.cost_model.measure.openvino_lowering import openvino_model_cost
    from kiln.target import Target

    target = Target(backend="openvino", intra_op_threads=cost_model.profile.threads)
    kernels = runtime_kernels(model, feeds, target, repeats=args.repeats if args.measure else 1)
    estimate = openvino_model_cost(cost_model, model, feeds, dims=dims, kernels=kernels)
    if not args.measure:
        return estimate, {}, None
    executable = OpenVINOExecutable(model, target, input_shapes={k: v.shape for k, v in feeds.items()})
    total = executable.benchmark(**feeds, repeats=args.repeats).median_ms
    return estimate, {k.name: k.median_us / 1e3 for k in kernels}, total


def cmd_cost(args: argparse.Namespace) -> int:
    from kiln.cost_model.analytical import op_key
    from kiln.cost_model.hardware import ProfileError
    from kiln.cost_model.measure.observed import price_at_inputs
    from kiln.cost_model.model import CostModel
    from kiln.ir.capture import load

    model = load(args.model)
    if args.backend != "onnxruntime":
        from kiln.backends.registry import check_backend

        check_backend(args.backend)
    cost_model = CostModel.from_file(args.profile) if args.profile else CostModel.default(args.threads,
                                                                                         backend=args.backend)
    if cost_model.profile.backend != args.backend:
        raise ProfileError(f"{args.profile} was measured through {cost_model.profile.backend}, not {args.backend}: "
                           f"pass --backend {cost_model.profile.backend}, or calibrate one with "
                           f"`kiln calibrate --backend {args.backend} -o <file>`.")
    if args.backend != "onnxruntime" and args.as_written and args.measure:
        raise KilnError(f"--as-written --measure times nodes with ONNX Runtime's profiler, not {args.backend}: "
                        f"drop --as-written to price and measure the kernels {args.backend} runs.")
    feeds, bound = _cost_feeds(args, model)
    measured: dict[str, float] = {}
    measured_total = None
    if args.backend == "openvino" and not args.as_written:
        estimate, measured, measured_total = _openvino_cost(args, cost_model, model, feeds, bound.dims)
        facts = estimate.facts
    else:
        estimate, facts = price_at_inputs(cost_model, model, feeds, dims=bound.dims, compiled=not args.as_written)
    if args.measure and not measured:
        from kiln.cost_model.measure.profiling import profile_model

        profile = profile_model(model, feeds, repeats=args.repeats, threads=cost_model.profile.threads)
        measured = {k.ort_name: k.median_us / 1e3 for k in profile.kernels} if not args.as_written else {
            name: group.median_us / 1e3 / len(group.node_names) for group in profile.groups for name in group.node_names}
        measured_total = profile.model_median_ms
    where = ("as written" if args.as_written else
             "as OpenVINO runs it" if args.backend == "openvino" else "as ONNX Runtime runs it")
    source = "fitted correction" if estimate.corrected else cost_model.profile.source
    console.print(f"[bold]{args.model}[/bold] on {cost_model.profile.name} ({source}), {where}: "
                  f"{len(estimate.per_node)} kernels")
    by_op: dict[str, list] = {}
    for node, e in estimate.per_node:
        # OpenVINO's kernels are listed by their layer type ("FullyConnected", "Subgraph", ...)
        row = by_op.setdefault(node.op_type if node.domain == "ai.openvino" else op_key(node), [0, 0, 0, 0.0, 0.0, {}])
        row[0] += 1
        row[1] += e.flops
        row[2] += e.bytes
        row[3] += e.ms
        row[4] += measured.get(node.name, 0.0)
        row[5][e.bound] = row[5].get(e.bound, 0) + 1
    table = Table(title="per op type")
    for column in ("op", "kernels", "GFLOP", "MB", "FLOP/B", "bound", "predicted ms", "measured ms"):
        table.add_column(column, justify="left" if column in ("op", "bound") else "right")
    for op, (count, flops, nbytes, ms, meas, bounds) in sorted(by_op.items(), key=lambda kv: -kv[1][3]):
        table.add_row(op, str(count), _gflop_text(flops), f"{nbytes / 1e6:.2f}",
                      f"{flops / nbytes:.1f}" if nbytes else "-", max(bounds, key=bounds.get), f"{ms:.3f}",
                      f"{meas:.3f}" if measured else "-")
    console.print(table)
    top = Table(title=f"top {args.top} kernels by predicted time")
    for column in ("node", "op", "GFLOP", "MB", "FLOP/B", "bound", "level", "predicted ms", "measured ms"):
        top.add_column(column, justify="left" if column in ("node", "op", "bound", "level") else "right")
    for node, e in sorted(estimate.per_node, key=lambda item: -item[1].ms)[: args.top]:
        top.add_row(node.name[:48], node.op_type, _gflop_text(e.flops), f"{e.bytes / 1e6:.2f}",
                    f"{e.intensity:.1f}", e.bound, e.memory_level, f"{e.ms:.3f}",
                    f"{measured[node.name]:.3f}" if node.name in measured else "-")
    console.print(top)
    line = (f"predicted {estimate.latency_ms:.2f} ms, peak memory {format_bytes(estimate.peak_memory_bytes)} "
            f"(weights {format_bytes(estimate.weight_bytes)})")
    if measured_total is not None:
        line += f"; measured {measured_total:.2f} ms (ratio {estimate.latency_ms / measured_total:.2f})"
    console.print(line)
    for line in cost_notes(estimate, bound, facts is not None):
        console.print(line, style="yellow" if line.startswith(("guessed", "not exact", "no formula")) else None,
                      markup=False, soft_wrap=True)
    if args.plot:
        from kiln.cost_model.plot import roofline_png

        path = roofline_png(estimate, cost_model.profile, args.plot, measured_ms=measured or None,
                            title=f"{Path(args.model).name} on {cost_model.profile.name}")
        console.print(f"Roofline plot written to {path}")
    return 0


def _gflop_text(flops: int) -> str:
    """GFLOP to three significant digits: a small Conv's work shows as 0.000221, not as 0.000."""
    return f"{flops / 1e9:.3g}" if flops else "0"


def cost_notes(estimate: Any, bound: Any, observed: bool) -> list[str]:
    """What `kiln cost` says under its tables: the shapes priced and how they were found, every size
    guessed, and every node not priced exactly (never silently at zero)."""
    lines = [f"input shapes: {bound.summary()}" + (" (other shapes observed on one ONNX Runtime run)" if observed
                                                  else " (other shapes by ONNX shape inference)")]
    if bound.warnings:
        lines.append("guessed: " + "; ".join(bound.warnings) + " - bind with --input-shape / --dim")
    if estimate.unknown_ops:
        lines.append(f"no formula, priced at one FLOP per output element: {estimate.unknown_ops}")
    if estimate.missing_shapes:
        lines.append(f"not exact, a shape is unknown (priced at one FLOP per output element): {estimate.missing_shapes}")
    if estimate.defaulted_ops:
        lines.append(f"data-dependent, priced at a conservative bound: {estimate.defaulted_ops}")
    if estimate.both_branches:
        lines.append(f"If with an unknown branch, both priced: {estimate.both_branches}")
    if estimate.trip_counts:
        lines.append("loop iterations priced: " + ", ".join(f"{k} x{v}" for k, v in estimate.trip_counts.items()))
    return lines


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the side-by-side benchmarks, which live in the repository (not in the wheel):
    `python -m benchmarks [-v] run ARGS`, with -v when kiln was given -v."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise KilnError(
            "kiln bench needs a kiln source checkout (benchmarks/ is not installed with the package): "
            "clone the repository, run `make test` once, then `kiln bench` or `python -m benchmarks run`."
        )
    verbose = ["-v"] if args.verbose else []
    return subprocess.call([sys.executable, "-m", "benchmarks", *verbose, "run", *args.bench_args], cwd=root)


def split_bench(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """`[global options] bench ARGS` -> (global options, ARGS), ARGS to go to the benchmarks
    untouched (argparse would reject options it does not know); None for other commands.
    The global options take no values, so the command is the first word not starting with '-'."""
    index = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if index is None or argv[index] != "bench":
        return None
    return argv[:index], argv[index + 1:]


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
    add_shape_arguments(opt)
    opt.add_argument("--fix-shapes", action="store_true",
                     help="write the bound input shapes into the saved model (default: they stay symbolic); "
                          "folding may then use them")
    opt.add_argument("--dump-ir", help="write the model after every pass into this folder")
    opt.add_argument("--measure", action="store_true",
                     help="also time the input and the optimized model (in turn) next to the predictions")
    opt.add_argument("--drop-blocks-min-cosine", type=float, metavar="COSINE",
                     help="approximate: drop residual blocks while the outputs on --sample-inputs keep this "
                          "cosine similarity with the original (e.g. 0.99); off by default")
    opt.add_argument("--quantize", choices=["int8", "static-int8", "int4-weights"],
                     help="approximate: dynamic int8 linears (ONNX Runtime or OpenVINO, --backend) where they are "
                          "priced or measured faster and every sample's output keeps cosine 0.99 with the original on "
                          "the calibration and sample inputs; static-int8 (OpenVINO, needs --calibration) also fixes "
                          "activation scales where the budget still holds; int4-weights stores the linears' weights "
                          "in 4-bit blocks (8-bit where 4-bit breaks the budget; MatMulNBits) where that measured "
                          "faster; off by default")
    opt.add_argument("--activation-range", choices=["minmax", "percentile", "mse", "entropy"],
                     help="how static-int8 fixes each activation's range from the calibration inputs: the whole "
                          "range (minmax, default), the central 99.99%% (percentile), the clip with the least "
                          "quantization error (mse) or TensorRT's KL rule (entropy)")
    opt.add_argument("--migrate-outliers", nargs="?", const="norms", choices=["norms", "all"],
                     help="before --quantize, move the outlier channels of the activations linears read into their "
                          "weights (SmoothQuant scales, OS+ shifts; exact), in the form measured to quantize best on "
                          "the calibration inputs: at LayerNorm outputs (norms, the default) or everywhere (all)")
    opt.add_argument("--no-bias-correction", action="store_true",
                     help="--quantize leaves the int8 linears' biases as they are, instead of taking out the mean "
                          "error their quantization adds on the calibration inputs where that measures better "
                          "(static-int8, and int8 on ONNX Runtime)")
    opt.add_argument("--no-rotation", action="store_true",
                     help="--quantize int8 never Hadamard-rotates a linear's input: a linear whose int8 form breaks "
                          "the budget goes straight back to fp32 (default: it first tries its input rotated in "
                          "blocks of 16, 32 or 64 channels, priced by the cost model, where that measures more "
                          "accurate)")
    opt.add_argument("--quantize-min-cosine", type=float, metavar="COSINE",
                     help="--quantize's accuracy budget: every sample's output keeps this cosine with the original's "
                          "on the calibration and sample inputs (default 0.99); the inputs you calibrate on are "
                          "a sample, so leave a margin for inputs they do not cover")
    opt.add_argument("--calibration", action="append", metavar="NPZ",
                     help="inputs (.npz keyed by input name) --quantize measures its accuracy on; repeatable "
                          "(default: the sample inputs)")
    opt.add_argument("--threads", type=int, metavar="N",
                     help="intra-op threads of the target: what --measure and measured choices run with and what "
                          "the cost model predicts for (default: the runtime's choice, predicted for 2)")
    opt.add_argument("--backend", choices=[*known_backends(), "auto"],
                     help="the runtime the optimized model is checked and timed on (default onnxruntime); auto times "
                          "every installed backend in turn and reports the fastest")
    opt.add_argument("--strict", action="store_true",
                     help="exit with 1 (errors exit with 2) when any pass failed or was rolled back")
    opt.add_argument("--explain", action="store_true",
                     help="after the pass table, list every rewrite with its rule, reason and origin, the rules' "
                          "most frequent near misses, and every decision with all its alternatives")
    opt.set_defaults(func=cmd_optimize)
    # `kiln bench ARGS` hands ARGS to `python -m benchmarks run` untouched (see split_bench).
    bench = sub.add_parser("bench", help="run the side-by-side benchmarks: kiln bench [--quick] [--models ...] ...")
    bench.set_defaults(func=cmd_bench, bench_args=[])
    ins = sub.add_parser("inspect", help="show inputs, outputs, op histogram and parameter bytes")
    ins.add_argument("model", help=".onnx file")
    ins.set_defaults(func=cmd_inspect)
    cal = sub.add_parser("calibrate", help="measure this machine into a hardware profile for the cost model")
    cal.add_argument("-o", "--output", help="profile JSON to write (default: ~/.cache/kiln/hardware_profile.json, "
                     "or $KILN_HARDWARE_PROFILE), which the cost model then reads")
    cal.add_argument("--threads", type=int, default=2, help="threads to calibrate for (default 2)")
    cal.add_argument("--quick", action="store_true", help="shorter micro-benchmarks (a few seconds)")
    cal.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                     help="runtime to measure GEMM, conv, element-wise rates and kernel launch through "
                          "(default onnxruntime); openvino writes hardware_profile.openvino.json beside the default")
    cal.set_defaults(func=cmd_calibrate)
    cost = sub.add_parser("cost", help="predict per-kernel and whole-model latency with the cost model")
    cost.add_argument("model", help=".onnx file")
    cost.add_argument("--measure", action="store_true",
                      help="also measure every kernel (ORT's profiler, or OpenVINO's performance counters)")
    cost.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime",
                      help="price the kernels this runtime runs, with its calibrated profile "
                           "(`kiln calibrate --backend`; default onnxruntime)")
    add_shape_arguments(cost)
    cost.add_argument("--sample-inputs", metavar="NPZ",
                      help="price and measure at these inputs (.npz keyed by input name) instead of sampled ones")
    cost.add_argument("--profile", help="hardware profile JSON (default: the calibrated one, else a preset)")
    cost.add_argument("--threads", type=int, default=2, help="threads (when no --profile is given)")
    cost.add_argument("--as-written", action="store_true",
                      help="price the model's own nodes instead of the graph ONNX Runtime runs after its fusions")
    cost.add_argument("--repeats", type=int, default=20, help="measured runs with --measure")
    cost.add_argument("--top", type=int, default=15, help="kernels to list")
    cost.add_argument("--plot", metavar="PNG", help="write a roofline plot of the kernels")
    cost.set_defaults(func=cmd_cost)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench = split_bench(argv)
    args = build_parser().parse_args(argv if bench is None else [*bench[0], "bench"])
    if bench is not None:
        args.bench_args = bench[1]
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KilnError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")  # names in [..] are not markup
        return 2


if __name__ == "__main__":
    sys.exit(main())
