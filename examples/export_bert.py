"""Export a random-init BERT-base to ONNX, optimize it with the kiln CLI, and check the result.

Three steps (all offline; BERT-base is built from the default BertConfig, no download):

    # 1. export: writes out/bert-base.onnx (+ .onnx.data), out/bert-base.inputs.npz and
    #    out/bert-base.torch.npz (PyTorch's output on those inputs)
    .venv/bin/python examples/export_bert.py out/bert-base.onnx

    # 2. optimize with the CLI
    .venv/bin/kiln optimize out/bert-base.onnx -o out/bert-base.opt.onnx --report out/bert-report.json

    # 3. check: runs both ONNX models with ONNX Runtime on the saved inputs and compares them
    #    with each other and with PyTorch (exit code 1 when a max abs diff exceeds --atol)
    .venv/bin/python examples/export_bert.py out/bert-base.onnx --check out/bert-base.opt.onnx \
        --report out/bert-report.json

`--all` runs the three steps in one go (the CLI as a subprocess, timed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"


def sidecar(onnx_path: Path, kind: str) -> Path:
    """out/bert-base.onnx -> out/bert-base.<kind>.npz"""
    return onnx_path.with_name(f"{onnx_path.stem}.{kind}.npz")


def build_bert_base(seed: int, batch: int, seq: int):
    """BERT-base (default BertConfig) with eager attention, wrapped to return last_hidden_state,
    and matching inputs: random token ids, two segments, the last quarter of the row padded."""
    import torch
    from transformers import BertConfig, BertModel

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = BertConfig(attn_implementation="eager", use_cache=False)
    model = LastHiddenState(BertModel(config, add_pooling_layer=False)).eval()
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[:, seq - seq // 4:] = 0
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[:, seq // 2:] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return model, inputs


def export(path: Path, *, seed: int, batch: int, seq: int, exporter_optimize: bool) -> None:
    import torch

    model, inputs = build_bert_base(seed, batch, seq)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = model(**inputs)
        started = time.perf_counter()
        torch.onnx.export(model, (), str(path), kwargs=inputs, dynamo=True, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], optimize=exporter_optimize)
    seconds = time.perf_counter() - started
    np.savez(sidecar(path, "inputs"), **{k: v.numpy() for k, v in inputs.items()})
    np.savez(sidecar(path, "torch"), **{OUTPUT_NAME: expected.numpy()})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"exported BERT-base ({n_params / 1e6:.1f} M parameters, batch {batch}, seq {seq}) to {path} "
          f"in {seconds:.1f} s (exporter optimize={exporter_optimize})")
    print(f"inputs: {sidecar(path, 'inputs')}  PyTorch output: {sidecar(path, 'torch')}")


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, int, float]:
    """(output, node count, mean seconds of 5 runs) with ONNX Runtime's default optimizations."""
    import onnx
    import onnxruntime as ort

    node_count = len(onnx.load(str(path), load_external_data=False).graph.node)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the raw export has CastLike nodes ORT warns it cannot fold
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [OUTPUT_NAME]:
        print(f"note: {path} has outputs {outputs}, expected [{OUTPUT_NAME!r}]")
    feeds = {k: v for k, v in feeds.items() if k in names}
    session.run(None, feeds)
    started = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        output = session.run(None, feeds)[0]
    return output, node_count, (time.perf_counter() - started) / repeats


def check(original: Path, optimized: Path, *, atol: float, report: Path | None) -> bool:
    with np.load(sidecar(original, "inputs")) as data:
        feeds = {k: data[k] for k in data.files}
    with np.load(sidecar(original, "torch")) as data:
        expected = data[OUTPUT_NAME]
    out_orig, nodes_orig, t_orig = ort_run(original, feeds)
    out_opt, nodes_opt, t_opt = ort_run(optimized, feeds)
    diffs = {
        "original ONNX vs PyTorch": float(np.abs(out_orig.astype(np.float64) - expected).max()),
        "optimized ONNX vs PyTorch": float(np.abs(out_opt.astype(np.float64) - expected).max()),
        "optimized vs original ONNX": float(np.abs(out_opt.astype(np.float64) - out_orig).max()),
    }
    print(f"original  {original}: {nodes_orig} nodes, ORT {t_orig * 1e3:.1f} ms/run (rough)")
    print(f"optimized {optimized}: {nodes_opt} nodes, ORT {t_opt * 1e3:.1f} ms/run (rough)")
    ok = out_orig.shape == expected.shape == out_opt.shape
    if not ok:
        print(f"shape mismatch: PyTorch {expected.shape}, original {out_orig.shape}, optimized {out_opt.shape}")
    for what, diff in diffs.items():
        passed = diff <= atol
        ok &= passed
        print(f"  max abs diff {what:<28} {diff:.3e}  {'ok' if passed else f'FAIL (> {atol:g})'}")
    if report is not None and report.exists():
        data = json.loads(report.read_text())
        print(f"kiln report: nodes {data['nodes_before']} -> {data['nodes_after']}, parameter bytes "
              f"{data['parameter_bytes_before']} -> {data['parameter_bytes_after']}, validated={data['validated']} "
              f"on {data['sample_inputs'] or '-'}, passes {data['seconds']:.2f} s "
              f"(validation {data['validation_seconds']:.2f} s)")
        for p in data["passes"]:
            error = p["error"]["max_abs"] if p.get("error") else None
            print(f"  {p['name']:<34} {p['status']:<11} {p['nodes_before']:>5} -> {p['nodes_after']:<5} "
                  f"{p['seconds']:.2f} s" + (f"  max abs err {error:.2e}" if error is not None else ""))
            if p["status"] not in ("applied", "unchanged"):
                print(f"    {p['message']}")
                ok = False
    print("PASS" if ok else "FAIL")
    return ok


def run_cli(original: Path, optimized: Path, report: Path) -> float:
    kiln = Path(sys.executable).with_name("kiln")
    command = [str(kiln), "optimize", str(original), "-o", str(optimized), "--report", str(report)]
    print("$", " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    print(f"kiln optimize took {seconds:.1f} s wall")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default="out/bert-base.onnx", type=Path,
                        help="where to write the exported model (default out/bert-base.onnx)")
    parser.add_argument("--check", metavar="OPTIMIZED", type=Path,
                        help="do not export; compare OPTIMIZED with the exported model and PyTorch")
    parser.add_argument("--report", type=Path, help="kiln report JSON to summarize with --check")
    parser.add_argument("--all", action="store_true",
                        help="export, run `kiln optimize` (timed) and check, writing <stem>.opt.onnx and "
                        "<stem>.report.json next to the output")
    parser.add_argument("--atol", type=float, default=1e-4, help="allowed max abs diff (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-exporter-optimize", action="store_true",
                        help="export with torch.onnx.export(optimize=False), leaving all clean-up to kiln")
    args = parser.parse_args(argv)
    if args.check is not None:
        return 0 if check(args.output, args.check, atol=args.atol, report=args.report) else 1
    export(args.output, seed=args.seed, batch=args.batch, seq=args.seq,
           exporter_optimize=not args.no_exporter_optimize)
    if args.all:
        optimized = args.output.with_name(f"{args.output.stem}.opt.onnx")
        report = args.report or args.output.with_name(f"{args.output.stem}.report.json")
        run_cli(args.output, optimized, report)
        return 0 if check(args.output, optimized, atol=args.atol, report=report) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
