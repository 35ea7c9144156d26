"""`python -m benchmarks run [--models ...] [--configs ...] [--quick] [--out DIR]` (also `kiln bench`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _split(text: str | None) -> list[str] | None:
    return [t for t in text.split(",") if t] if text else None


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from benchmarks import zoo
    from benchmarks.configs import CONFIGS
    from benchmarks.harness import RunSettings, load_run, run_grid, save_run
    from benchmarks.results import render_markdown

    console = Console()
    previous = None
    if args.resume:
        previous = load_run(Path(args.resume) / "run.json")
        args.out, args.quick = args.resume, previous.quick
        console.print(f"Resuming {args.resume}: {len(previous.cells)} cells already measured")
    models = _split(args.models) or [n for n, e in zoo.ZOO.items() if e.quick == args.quick]
    configs = _split(args.configs) or list(CONFIGS)
    unknown = [m for m in models if m not in zoo.ZOO] + [c for c in configs if c not in CONFIGS]
    if unknown:
        console.print(f"[red]unknown model(s) or config(s): {unknown}[/red]; models: {sorted(zoo.ZOO)}; "
                      f"configs: {sorted(CONFIGS)}")
        return 2
    batches = [int(b) for b in _split(args.batches)] if args.batches else ([1] if args.quick else None)
    settings = RunSettings.quick() if args.quick else RunSettings()
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    publish = args.publish or (not args.quick and args.publish is None and not args.models and not args.configs)
    # A published (full) run keeps its raw JSON in the repository, next to RESULTS.md, so it can be
    # resumed and audited later; other runs go to the git-ignored cache.
    default_out = "benchmarks/results" if publish else f".cache/benchmarks/runs/{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out or default_out)

    def write(run) -> None:
        save_run(run, out)
        markdown = render_markdown(run)
        (out / "RESULTS.md").write_text(markdown)
        if publish:
            Path("benchmarks/RESULTS.md").write_text(markdown)

    def progress(run, cell, total: int) -> None:
        figure = (f"{cell.median_ms:.2f} ms, ratio {cell.ratio_vs_baseline:.3f}" if cell.status == "ok"
                  else f"{cell.status}: {cell.error[:100]}")
        console.print(f"[{len(run.cells)}/{total}] {cell.model} b{cell.batch} {cell.config}: {figure} "
                      f"({cell.wall_seconds:.0f} s)")
        write(run)  # partial results survive an interrupted run

    run = run_grid(models, batches, configs, settings, quick=args.quick, command=command, progress=progress,
                   previous=previous)
    write(run)
    if publish:
        console.print("Published benchmarks/RESULTS.md")
    console.print(f"Raw results: {out / 'run.json'}; table: {out / 'RESULTS.md'} ({run.seconds / 60:.1f} min)")
    return 0


def cmd_folding(args: argparse.Namespace) -> int:
    from benchmarks import folding, zoo

    models = _split(args.models) or [n for n, e in zoo.ZOO.items() if e.quick == args.quick]
    settings = {"warmup": 2, "repeats": 8, "min_seconds": 0.2} if args.quick else {}
    results = []
    for model in models:
        results.append(folding.compare(model, **settings))
        print(results[-1].summary_line(), flush=True)
    table = folding.render(results)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def cmd_equivalence(args: argparse.Namespace) -> int:
    from benchmarks import equivalence

    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return equivalence.main(args, command=command)


def cmd_cell(args: argparse.Namespace) -> int:
    from benchmarks.harness import RunSettings, measure_cell

    settings = RunSettings(**json.loads(args.settings)) if args.settings else RunSettings()
    cell = measure_cell(args.model, args.batch, args.config, settings)
    Path(args.out).write_text(json.dumps(asdict(cell)))
    return 0


def cmd_facts(args: argparse.Namespace) -> int:
    from benchmarks.harness import model_facts

    print(json.dumps(asdict(model_facts(args.model, args.batch))))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cost-model"]:  # its own parser: python -m benchmarks cost-model --help
        from benchmarks import cost_model

        return cost_model.main(argv[1:])
    if argv[:1] == ["quantization"]:  # its own parser: python -m benchmarks quantization --help
        from benchmarks import quantization

        return quantization.main(argv[1:])
    if argv[:1] == ["residual-add-as-sum"]:  # its own parser
        from benchmarks import residual_add_as_sum

        return residual_add_as_sum.main(argv[1:])
    if argv[:1] == ["block-dropping"]:  # its own parser: python -m benchmarks block-dropping --help
        from benchmarks import block_dropping

        return block_dropping.main(argv[1:])
    if argv[:1] == ["openvino-zoo"]:  # its own parser
        from benchmarks import openvino_zoo

        return openvino_zoo.main(argv[1:])
    if argv[:1] == ["openvino-ab"]:  # its own parser
        from benchmarks import openvino_ab

        return openvino_ab.main(argv[1:])
    if argv[:1] == ["openvino-cost"]:  # its own parser
        from benchmarks import openvino_cost

        return openvino_cost.main(argv[1:])
    if argv[:1] == ["openvino-node-suite"]:  # its own parser
        from benchmarks import openvino_node_suite

        return openvino_node_suite.main(argv[1:])
    if argv[:1] == ["real-files"]:  # its own parser: python -m benchmarks real-files --help
        from benchmarks import real_files

        return real_files.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="kiln side-by-side benchmarks")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure models x configurations and write raw JSON + RESULTS.md")
    run.add_argument("--models", help="comma-separated zoo names (default: the full zoo, or the quick set)")
    run.add_argument("--configs", help="comma-separated configuration names (default: all)")
    run.add_argument("--batches", help="comma-separated batch sizes (default: each model's, 1 with --quick)")
    run.add_argument("--quick", action="store_true", help="tiny models, fewer repeats: a few minutes")
    run.add_argument("--out", help="folder for run.json and RESULTS.md (default .cache/benchmarks/runs/<time>)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run saved in DIR (same models/configs), measuring only missing cells")
    run.add_argument("--publish", action=argparse.BooleanOptionalAction, default=None,
                     help="also write benchmarks/RESULTS.md (default: only for a full run)")
    run.set_defaults(func=cmd_run)
    fold = sub.add_parser("folding", help="kiln level-2 folding vs onnxsim, onnxslim, onnxoptimizer (batch 1)")
    fold.add_argument("--models", help="comma-separated zoo names (default: the full zoo, or the quick set)")
    fold.add_argument("--quick", action="store_true", help="the tiny models, fewer repeats")
    fold.add_argument("--out", help="also write the table to this markdown file")
    fold.set_defaults(func=cmd_folding)
    equiv = sub.add_parser("equivalence", help="kiln.optimize of the working tree vs a base revision on the zoo "
                           "(batch 1): same graphs, same outputs?")
    equiv.add_argument("--base", required=True, metavar="REV", help="the git revision to compare with (any commit-ish)")
    equiv.add_argument("--models", help="comma-separated zoo names (default: the full zoo, or the quick set)")
    equiv.add_argument("--quick", action="store_true", help="the zoo's tiny models")
    equiv.add_argument("--out", help="also write the markdown table to this file")
    equiv.add_argument("--cache-dir", help="zoo export cache (default: the zoo's, .cache/benchmarks)")
    equiv.add_argument("--atol", type=float, help="outputs within this max abs diff are 'close' (default 1e-05)")
    equiv.add_argument("--timeout", type=float, default=3600.0, help="seconds per case and tree (default 3600)")
    equiv.add_argument("--keep", metavar="DIR", help="keep both snapshots (records, outputs, worker logs) in DIR")
    equiv.set_defaults(func=cmd_equivalence)
    sub.add_parser("cost-model", help="cost model accuracy: fit on some zoo models, test on the others")
    sub.add_parser("real-files", help="kiln optimize on trained ONNX files from PyPI wheels (OCR, captcha, VAD)")
    sub.add_parser("block-dropping", help="approximate block dropping at several cosine budgets (MiniLM, BERT-base)")
    sub.add_parser("quantization", help="kiln int8 against ORT quantize_dynamic: latency and accuracy (MiniLM, ...)")
    sub.add_parser("residual-add-as-sum", help="Add -> LayerNormalization as Sum: ORT's fused kernel vs unfused, "
                                               "and kiln level 2 with and without the pass")
    cell = sub.add_parser("cell", help=argparse.SUPPRESS)
    cell.add_argument("--model", required=True)
    cell.add_argument("--batch", type=int, required=True)
    cell.add_argument("--config", required=True)
    cell.add_argument("--out", required=True)
    cell.add_argument("--settings")
    cell.set_defaults(func=cmd_cell)
    facts = sub.add_parser("facts", help=argparse.SUPPRESS)
    facts.add_argument("--model", required=True)
    facts.add_argument("--batch", type=int, required=True)
    facts.set_defaults(func=cmd_facts)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
