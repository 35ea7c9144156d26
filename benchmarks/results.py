"""Render a benchmark run as markdown: machine and versions on top, one table per model and batch."""

from __future__ import annotations

from benchmarks.harness import BASELINE, Run

_FLOPS_PRECISION = {"fp32": "fp32", "int8": "int8", "int4": "int8"}


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _roofline_ms(flops: int | None, nbytes: int | None, peaks: dict, precision: str) -> float | None:
    from benchmarks.roofline import MachinePeaks, roofline_ms

    if not flops:
        return None
    return roofline_ms(flops, nbytes or 0, MachinePeaks(**peaks), _FLOPS_PRECISION.get(precision, "fp32"))


def render_markdown(run: Run) -> str:
    machine = run.machine
    lines = [
        "# kiln benchmark results",
        "",
        f"Command: `{run.command}`  ",
        f"Started {run.started}; took {run.seconds / 60:.1f} min{' (quick mode)' if run.quick else ''}.",
        *([f"Resumed {', '.join(run.resumed)}.  "] if run.resumed else []),
        *([f"**Incomplete: {len(run.cells)} of {run.planned} cells measured so far**; "
           f"`python -m benchmarks run --resume <run folder>` measures the rest."]
          if run.planned and len(run.cells) < run.planned else []),
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('logical_cores', '?')} logical cores; "
        f"flags: {', '.join(f for f, on in machine.get('flags', {}).items() if on) or 'none of interest'}",
        f"- Measured peaks ({run.peaks.get('threads', '?')} threads): fp32 GEMM {run.peaks.get('fp32_gflops_gemm', 0):.0f} "
        f"GFLOP/s, fp32 FMA {run.peaks.get('fp32_gflops_fma', 0):.0f} GFLOP/s, int8 {run.peaks.get('int8_gops', 0):.0f} "
        f"GOP/s, DRAM {run.peaks.get('dram_gbps', 0):.1f} GB/s",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(machine.get("versions", {}).items()))
        + (f"; kiln commit {machine['kiln_commit']}" if machine.get("kiln_commit") else ""),
        "",
        "## How to read",
        "",
        f"Each cell ran in its own process, alternating with `{BASELINE}` (ONNX Runtime, ENABLE_ALL, on the "
        "same export) call by call. *ratio* is the median of per-pair ratios config/baseline (lower is faster). "
        "*x roofline* is the median latency over the roofline bound from the graph's analytic FLOPs and bytes "
        "and the measured peaks. *max abs* and *cos* compare the first output with fp32 PyTorch. "
        "*peak RSS* is the cell process's peak after preparing the configuration (model case included).",
        "",
    ]
    facts = {(f.model, f.batch): f for f in run.facts}
    groups: dict[tuple[str, int], list] = {}
    for cell in run.cells:
        groups.setdefault((cell.model, cell.batch), []).append(cell)
    for (model, batch), cells in groups.items():
        fact = facts.get((model, batch))
        header = f"## {model}, batch {batch}"
        if fact and fact.flops:
            header += f" ({fact.flops / 1e9:.2f} GFLOP, {fact.nodes} nodes in the export)"
        lines += [header, ""]
        if fact and fact.error:
            lines += [f"Graph facts unavailable: {fact.error}", ""]
        lines += [
            "| config | prec | median ms | p90 ms | ratio vs ort-all | x roofline | opt s | nodes | MB | peak RSS MB "
            "| max abs | cos | note / error |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in cells:
            if c.status != "ok":
                lines.append(f"| {c.config} | {c.precision} |  |  |  |  |  |  |  |  |  |  | "
                             f"{'n/a' if c.status == 'n/a' else 'error'}: {c.error.replace('|', '/')} |")
                continue
            bound = _roofline_ms(fact.flops if fact else None, fact.bytes if fact else None, run.peaks, c.precision)
            cos = c.embedding_cosine if c.embedding_cosine is not None else c.cosine
            lines.append(
                f"| {c.config} | {c.precision} | {_fmt(c.median_ms, '.2f')} | {_fmt(c.p90_ms, '.2f')} | "
                f"{_fmt(c.ratio_vs_baseline, '.3f')} | {_fmt(c.median_ms / bound if bound else None, '.2f')} | "
                f"{_fmt(c.optimize_seconds, '.1f')} | {c.node_count if c.node_count is not None else ''} | "
                f"{_fmt(c.model_bytes / 1e6 if c.model_bytes else None, '.0f')} | "
                f"{_fmt(c.peak_rss_bytes / 2**20 if c.peak_rss_bytes else None, '.0f')} | "
                f"{_fmt(c.max_abs_diff, '.1e')} | {_fmt(cos, '.5f')} | {c.note} |"
            )
        lines.append("")
    return "\n".join(lines)
