"""A zoo of models like users bring: legacy-exporter ONNX files with dynamic axes, built offline
and cached, for checking that `kiln optimize` either works on them or says clearly why not.

    .venv/bin/python -m benchmarks.user_zoo [NAME ...] [--cache-dir .cache/benchmarks/user_zoo]

(run from the repository root). For each entry the command exports the model (or loads the cached
export) and prints its opset, inputs with their declared dims, node count, the ops that matter
(control flow, recurrent cells, detection ops, normalizations) and the max abs diff of ONNX Runtime
against PyTorch on two input sets of different dynamic sizes.

Every model is a small, realistic architecture with seeded random weights, exported with the
TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`) at opsets 11-16, as most ONNX
files in the wild were: a CRNN captcha reader (bidirectional LSTM), a GRU tagger on token ids, a
text CNN that takes at most 64 tokens though its sequence is declared dynamic (kiln's default guess
of 128 does not run: it must stop with an error naming the fix), a ResNet-ish CNN with dynamic H and
W, a PaddleOCR-like direction classifier whose input dims are written -1 and empty, a
Conv-BN-ReLU-BN chain whose BatchNormalization nodes survive the export (and the same chain exported
in training mode by mistake), a small BERT, a detector (TopK, a Loop over classes around
NonMaxSuppression, an If, RoiAlign), an FPN upsampling with Resize, a 1-D audio CNN over raw samples
and an early-exit classifier (an If on the data). The detector's NMS and RoiAlign are
`torch.library` ops with pure-PyTorch kernels and ONNX symbolics, the way torchvision's are
(torchvision itself cannot load here).

Exports are cached in ``<cache_dir>/<name>/`` (model.onnx, the input sets, the PyTorch outputs),
keyed by torch / onnx versions, a hash of the entry's config (sizes, opset, dynamic axes, export
options, input shapes) and a hash of this file (builders are code): a later process loads the ONNX
file without building the module.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from benchmarks.base import CACHE_DIR, THREADS
from benchmarks.zoo import _locked, _read_meta  # the benchmark zoo's cache lock and meta.json reader

logger = logging.getLogger(__name__)

SEED = 0
# Bump to re-export every entry (the key also hashes this file, so editing a builder re-exports).
USER_ZOO_VERSION = 1
USER_ZOO_DIR = CACHE_DIR / "user_zoo"
# Ops worth naming in a summary even when rare: what makes these models different from transformers.
HIGHLIGHT_OPS = ("Loop", "If", "Scan", "LSTM", "GRU", "RNN", "NonMaxSuppression", "RoiAlign", "TopK", "Resize",
                 "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GatherND", "ScatterND",
                 "SequenceInsert", "ConcatFromSequence", "Conv", "MatMul", "Gemm")

Inputs = tuple[Tensor, ...]


class UserZooExportError(RuntimeError):
    """The legacy ONNX export of a user-zoo model failed."""


@dataclass(frozen=True)
class UserZooEntry:
    """One model: `make_module()` builds it (weights seeded by the caller), `make_inputs(k)` gives
    input set k (0: the export's example; 1: other dynamic sizes), and the export settings."""

    name: str
    description: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    make_module: Callable[[], nn.Module] = field(repr=False, compare=False)
    make_inputs: Callable[[int], Inputs] = field(repr=False, compare=False)
    config: dict[str, Any] = field(default_factory=dict)
    # torch.onnx.export keyword arguments beyond the common ones (training mode, constant folding)
    export_options: dict[str, Any] = field(default_factory=dict)
    # edits of the exported proto, as some exporters write them (e.g. -1 dims)
    edit_proto: Callable[[onnx.ModelProto], None] | None = field(default=None, repr=False, compare=False)
    # prepared before building or exporting (custom ops and their ONNX symbolics)
    setup: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def module(self) -> nn.Module:
        """The eval-mode module, its random weights seeded without touching the global RNG."""
        if self.setup is not None:
            self.setup()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            module = self.make_module()
        return module.eval()

    def key(self) -> dict[str, Any]:
        """What the cached export depends on."""
        config = {"config": self.config, "opset": self.opset, "inputs": list(self.input_names),
                  "outputs": list(self.output_names), "dynamic_axes": self.dynamic_axes,
                  "export": {k: str(v) for k, v in self.export_options.items()},
                  "shapes": [[list(t.shape) for t in self.make_inputs(k)] for k in (0, 1)]}
        text = json.dumps(config, sort_keys=True, default=str)
        return {"user_zoo_version": USER_ZOO_VERSION, "name": self.name, "torch": torch.__version__,
                "onnx": onnx.__version__, "config_sha": hashlib.sha256(text.encode()).hexdigest(),
                "source_sha": _source_sha()}


@functools.cache
def _source_sha() -> str:
    """A hash of this module: the builders are code, and a changed builder must re-export."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@dataclass
class UserCase:
    """A cached export with its input sets and the PyTorch outputs on them."""

    name: str
    entry: UserZooEntry
    onnx_path: Path
    input_sets: list[dict[str, np.ndarray]]  # by ONNX input name
    references: list[list[np.ndarray]]  # PyTorch outputs per input set, in ONNX output order

    def proto(self) -> onnx.ModelProto:
        return onnx.load(self.onnx_path)


# ---------------------------------------------------------------------------------------------
# Helpers


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + seed)


def _randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=_generator(seed))


def _randomize_batchnorms(module: nn.Module) -> None:
    """Trained-looking BatchNorm statistics and affine parameters, so folding them matters."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                bn.running_mean.normal_(0.0, 0.2, generator=gen)
                bn.running_var.uniform_(0.5, 1.5, generator=gen)
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.normal_(0.0, 0.2, generator=gen)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), activation())


# ---------------------------------------------------------------------------------------------
# crnn-captcha: ddddocr-style CRNN over a grey 64-pixel-high image of any width


class CRNN(nn.Module):
    """Conv/BN/ReLU/MaxPool to an 8-row feature map, columns as a sequence, 2-layer bidirectional
    LSTM, Linear to the character classes, log_softmax: [1, 1, 64, W] -> [W / 4, 1, classes]."""

    def __init__(self, classes: int = 64, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 16), nn.MaxPool2d(2),
            conv_bn_relu(16, 32), nn.MaxPool2d(2),
            conv_bn_relu(32, 48), conv_bn_relu(48, 48), nn.MaxPool2d((2, 1)),
        )
        self.rnn = nn.LSTM(48 * 8, hidden, num_layers=2, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, classes)

    def forward(self, input1: Tensor) -> Tensor:
        features = self.features(input1)  # [B, C, 8, W / 4]
        b, c, h, w = features.shape
        sequence = features.permute(3, 0, 1, 2).reshape(w, b, c * h)
        hidden, _ = self.rnn(sequence)
        return self.classifier(hidden).log_softmax(-1)


def _crnn() -> nn.Module:
    model = CRNN()
    _randomize_batchnorms(model)
    return model


# ---------------------------------------------------------------------------------------------
# gru-tagger: token ids -> Embedding -> GRU -> Linear


class GRUTagger(nn.Module):
    """A sequence tagger on token ids: [batch, sequence] int64 -> [batch, sequence, tags]."""

    def __init__(self, vocab: int = 500, embed: int = 32, hidden: int = 48, tags: int = 9):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.tagger = nn.Linear(2 * hidden, tags)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden, _ = self.gru(self.embedding(input_ids))
        return self.tagger(hidden)


GRU_VOCAB = 500


def _tokens(seed: int, batch: int, seq: int) -> Inputs:
    return (torch.randint(1, GRU_VOCAB, (batch, seq), generator=_generator(seed)),)


# ---------------------------------------------------------------------------------------------
# textcnn-max-len: learned positions for at most 64 tokens, exported with a dynamic sequence


class TextCNN(nn.Module):
    """Token and learned position embeddings (at most `max_len` tokens), Conv1d over time with two
    widths, max over time, Linear: [batch, sequence] -> [batch, classes]. Longer inputs fail in the
    position lookup, as such models do, though the export declares the sequence dynamic."""

    def __init__(self, vocab: int = 2000, dim: int = 48, max_len: int = 64, classes: int = 5):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, 32, k, padding=k // 2) for k in (3, 5))
        self.classifier = nn.Linear(64, classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = (self.tokens(input_ids) + self.positions(positions)).transpose(1, 2)
        pooled = torch.cat([torch.relu(conv(x)).amax(-1) for conv in self.convs], -1)
        return self.classifier(pooled)


TEXTCNN = {"vocab": 2000, "dim": 48, "max_len": 64, "classes": 5}


# ---------------------------------------------------------------------------------------------
# cnn-dynamic-hw: a small ResNet on images of any size


class BasicBlock(nn.Module):
    """ResNet basic block; a strided block has a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(conv_bn_relu(cin, cout, 3, stride),
                                    nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, four basic blocks (two strided), global average pool, Linear: [B, 3, H, W] -> [B, classes]."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1),
                                    BasicBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, image: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(image))), 1))


def _resnet() -> nn.Module:
    model = SmallResNet()
    _randomize_batchnorms(model)
    return model


# ---------------------------------------------------------------------------------------------
# ocr-cls-neg-dims: a PaddleOCR-like text direction classifier, input dims written -1 / empty


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))


class MobileBlock(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise, squeeze-excite, 1x1 project (residual at stride 1)."""

    def __init__(self, cin: int, expand: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, expand, 1, activation=nn.Hardswish),
                                  conv_bn_relu(expand, expand, 3, stride, groups=expand, activation=nn.Hardswish),
                                  SqueezeExcite(expand), nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class DirectionClassifier(nn.Module):
    """[B, 3, H, W] -> softmax over {0, 180} degrees, as PaddleOCR's ch_ppocr cls model."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 8, 3, 2, activation=nn.Hardswish)
        self.blocks = nn.Sequential(MobileBlock(8, 16, 8, 1), MobileBlock(8, 24, 16, 2), MobileBlock(16, 48, 16, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1)).softmax(-1)


def _direction_classifier() -> nn.Module:
    model = DirectionClassifier()
    _randomize_batchnorms(model)
    return model


def _paddle_dims(proto: onnx.ModelProto) -> None:
    """Write the dims as Paddle exports do: batch `dim_value: -1`, H and W empty (no value, no name),
    and the output's batch -1."""
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_param"):
                dim.Clear()
                if axis == 0:
                    dim.dim_value = -1


# ---------------------------------------------------------------------------------------------
# conv-bn-relu-bn: BatchNormalization nodes kept in the ONNX (TrainingMode.PRESERVE of an eval module)


class ConvBnReluBn(nn.Module):
    """Two Conv-BN-ReLU-BN stages and a final Conv: the second BN of a stage follows a ReLU, so only
    a pass that folds it forward into the next Conv can remove it."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.BatchNorm2d(16),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.BatchNorm2d(32),
            nn.Conv2d(32, 8, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)


def _conv_bn_relu_bn() -> nn.Module:
    model = ConvBnReluBn()
    _randomize_batchnorms(model)
    return model


# ---------------------------------------------------------------------------------------------
# bert-legacy-dynamic: transformers BERT through the legacy exporter

BERT_CONFIG = {"vocab_size": 1000, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 256, "max_position_embeddings": 256}


class BertHidden(nn.Module):
    """BertModel called with positional ids, mask and segments, returning last_hidden_state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _bert() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertModel

    config = BertConfig(attn_implementation="eager", use_cache=False, **BERT_CONFIG)
    return BertHidden(BertModel(config, add_pooling_layer=False))


def _bert_inputs(seed: int) -> Inputs:
    batch, seq = ((1, 16), (2, 24))[seed]
    gen = _generator(seed)
    ids = torch.randint(5, BERT_CONFIG["vocab_size"], (batch, seq), generator=gen)
    ids[:, 0] = 1
    mask = torch.ones(batch, seq, dtype=torch.long)
    segments = torch.zeros(batch, seq, dtype=torch.long)
    segments[:, seq // 2:] = 1
    if batch > 1:
        mask[1:, seq - 5:] = 0
        ids[1:, seq - 5:] = 0
    return ids, mask, segments


# ---------------------------------------------------------------------------------------------
# detector: backbone, anchor heads, decode, TopK, per-class NMS in a Loop, If, RoiAlign, box head

DETECTOR = {"classes": 3, "anchors": 3, "stride": 8, "pre_nms_top_n": 200, "max_per_class": 30,
            "iou_threshold": 0.5, "score_threshold": 0.05, "max_detections": 60, "roi_size": 5,
            "sampling_ratio": 2, "anchor_sizes": [16.0, 32.0, 64.0]}


def nms_reference(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                  score_threshold: float) -> Tensor:
    """ONNX NonMaxSuppression (corner boxes) in PyTorch, as ONNX Runtime computes it: per image and
    class, boxes above the score threshold by descending score (ties: lower index first), each kept
    unless its IoU with a kept box exceeds the threshold. boxes [B, N, 4], scores [B, C, N] -> [M, 3]."""
    selected: list[list[int]] = []
    for b in range(boxes.shape[0]):
        lo = torch.minimum(boxes[b, :, :2], boxes[b, :, 2:])
        hi = torch.maximum(boxes[b, :, :2], boxes[b, :, 2:])
        area = (hi - lo).prod(-1)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            candidates = torch.nonzero(s > score_threshold).flatten()
            order = candidates[torch.sort(s[candidates], descending=True, stable=True).indices]
            kept: list[int] = []
            for index in order.tolist():
                if len(kept) >= max_per_class:
                    break
                if kept:
                    k = torch.tensor(kept)
                    inter = (torch.minimum(hi[k], hi[index]) - torch.maximum(lo[k], lo[index])).clamp(min=0).prod(-1)
                    union = area[k] + area[index] - inter
                    valid = (inter > 0) & (union > 0) & (area[k] > 0) & (area[index] > 0)
                    if bool((valid & (inter / union > iou_threshold)).any()):
                        continue
                kept.append(index)
            selected.extend([b, c, k] for k in kept)
    return torch.tensor(selected, dtype=torch.long).reshape(-1, 3)


def _sample_axis(start: Tensor, bin_size: Tensor, bins: int, ratio: int, size: int) -> tuple[Tensor, ...]:
    """Bilinear sample points of RoiAlign along one axis: low / high indices, their weights, validity."""
    offsets = torch.arange(bins, dtype=start.dtype)[:, None] + (torch.arange(ratio, dtype=start.dtype) + 0.5) / ratio
    pos = start[:, None, None] + offsets[None] * bin_size[:, None, None]  # [M, bins, ratio]
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    return low, high, 1.0 - frac, frac, valid


def roi_align_reference(features: Tensor, rois: Tensor, batch_indices: Tensor, spatial_scale: float,
                        output_size: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """ONNX RoiAlign (mode avg, fixed sampling ratio) in PyTorch: [M, C, output_size, output_size]."""
    _, channels, height, width = features.shape
    offset = 0.5 if aligned else 0.0
    start = rois * spatial_scale - offset  # x1, y1, x2, y2
    size = start[:, 2:] - start[:, :2]
    if not aligned:
        size = size.clamp(min=1.0)
    bins = size / output_size
    yl, yh, wyl, wyh, vy = _sample_axis(start[:, 1], bins[:, 1], output_size, sampling_ratio, height)
    xl, xh, wxl, wxh, vx = _sample_axis(start[:, 0], bins[:, 0], output_size, sampling_ratio, width)
    maps = features[batch_indices].permute(0, 2, 3, 1)  # [M, H, W, C]
    m = torch.arange(rois.shape[0])[:, None, None, None, None]

    def at(y: Tensor, x: Tensor) -> Tensor:  # [M, oh, r, ow, r, C]
        return maps[m, y[:, :, :, None, None], x[:, None, None, :, :]]

    def w(a: Tensor, b: Tensor) -> Tensor:
        return (a[:, :, :, None, None] * b[:, None, None, :, :])[..., None]

    total = (w(wyl, wxl) * at(yl, xl) + w(wyl, wxh) * at(yl, xh) + w(wyh, wxl) * at(yh, xl)
             + w(wyh, wxh) * at(yh, xh))
    total = total * (vy[:, :, :, None, None] & vx[:, None, None, :, :])[..., None]
    return (total.sum(dim=(2, 4)) / (sampling_ratio * sampling_ratio)).permute(0, 3, 1, 2).contiguous()


@functools.cache
def _detector_ops() -> None:
    """Register `user_zoo::nms` and `user_zoo::roi_align` (PyTorch kernels above) and their ONNX
    symbolics for the legacy exporter, as torchvision registers its ops."""
    from torch.onnx import symbolic_helper

    @torch.library.custom_op("user_zoo::nms", mutates_args=())
    def nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
            score_threshold: float) -> Tensor:
        return nms_reference(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @nms.register_fake
    def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
        return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.long)

    @torch.library.custom_op("user_zoo::roi_align", mutates_args=())
    def roi_align(features: Tensor, rois: Tensor, batch_indices: Tensor, spatial_scale: float, output_size: int,
                  sampling_ratio: int, aligned: bool) -> Tensor:
        return roi_align_reference(features, rois, batch_indices, spatial_scale, output_size, sampling_ratio, aligned)

    @roi_align.register_fake
    def _(features, rois, batch_indices, spatial_scale, output_size, sampling_ratio, aligned):
        return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))

    @symbolic_helper.parse_args("v", "v", "i", "f", "f")
    def nms_symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.long),
                    const(iou_threshold, torch.float), const(score_threshold, torch.float))

    @symbolic_helper.parse_args("v", "v", "v", "f", "i", "i", "b")
    def roi_align_symbolic(g, features, rois, batch_indices, spatial_scale, output_size, sampling_ratio, aligned):
        return g.op("RoiAlign", features, rois, batch_indices, spatial_scale_f=spatial_scale,
                    output_height_i=output_size, output_width_i=output_size, sampling_ratio_i=sampling_ratio,
                    mode_s="avg", coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel")

    torch.onnx.register_custom_op_symbolic("user_zoo::nms", nms_symbolic, 11)
    torch.onnx.register_custom_op_symbolic("user_zoo::roi_align", roi_align_symbolic, 16)


@functools.cache
def _scripted_postprocess() -> tuple[Any, Any]:
    """TorchScript functions (their loops and branches export as ONNX Loop and If): NMS per class, as
    torchvision's `_batched_nms_vanilla`, and the best `max_detections` of the detections."""
    _detector_ops()

    def per_class_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                      score_threshold: float) -> Tensor:
        # boxes [B, K, 4], scores [B, K, C] -> (image, class, box) triples
        selected = torch.zeros((0, 3), dtype=torch.long)
        for c in range(scores.size(2)):
            keep = torch.ops.user_zoo.nms(boxes, scores[:, :, c].unsqueeze(1), max_per_class, iou_threshold,
                                          score_threshold)
            labels = torch.full_like(keep[:, 1:2], c)
            selected = torch.cat([selected, torch.cat([keep[:, 0:1], labels, keep[:, 2:3]], 1)], 0)
        return selected

    def best_detections(scores: Tensor, max_detections: int) -> Tensor:
        if scores.size(0) > max_detections:
            return scores.topk(max_detections).indices
        return scores.argsort(descending=True)

    return torch.jit.script(per_class_nms), torch.jit.script(best_detections)


def _topk_size(values: Tensor, k: int) -> Any:
    """min(k, values.size(1)), traced through the shape when exporting (torchvision's `_topk_min`)."""
    if not torch.jit.is_tracing():
        return min(k, values.size(1))
    size = torch._shape_as_tensor(values)[1].unsqueeze(0)
    return torch.min(torch.cat((torch.tensor([k], dtype=size.dtype), size), 0))


class Detector(nn.Module):
    """A one-stage detector with a second-stage box head:
    image [B, 3, H, W] -> backbone (stride 8) -> per-anchor box deltas and class scores -> decoded,
    clipped boxes -> TopK pre-NMS -> per-class NMS (Loop) -> best detections (If) -> RoiAlign on the
    feature map -> head refining scores and boxes. Outputs boxes [M, 4], scores [M], labels [M]."""

    def __init__(self):
        super().__init__()
        cfg = DETECTOR
        self.classes, self.anchors = cfg["classes"], cfg["anchors"]
        self.backbone = nn.Sequential(conv_bn_relu(3, 16, 3, 2), conv_bn_relu(16, 32, 3, 2), conv_bn_relu(32, 32, 3, 2))
        self.box_head = nn.Conv2d(32, self.anchors * 4, 1)
        self.class_head = nn.Conv2d(32, self.anchors * self.classes, 1)
        roi = cfg["roi_size"]
        self.roi_head = nn.Sequential(nn.Flatten(), nn.Linear(32 * roi * roi, 64), nn.ReLU())
        self.roi_scores = nn.Linear(64, self.classes + 1)
        self.roi_deltas = nn.Linear(64, 4)
        self.register_buffer("anchor_sizes", torch.tensor(cfg["anchor_sizes"]), persistent=False)

    def anchor_boxes(self, features: Tensor) -> Tensor:
        """Anchors centred on every feature cell, `anchors` sizes each: [h * w * A, 4] (x1, y1, x2, y2)."""
        stride = DETECTOR["stride"]
        ys = (torch.arange(features.shape[2], dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(features.shape[3], dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        half = (self.anchor_sizes / 2).reshape(1, -1, 1) * torch.tensor([-1.0, -1.0, 1.0, 1.0])
        return (centres + half).reshape(-1, 4)

    def decode(self, anchors: Tensor, deltas: Tensor, image: Tensor) -> Tensor:
        """Box deltas (dx, dy, dw, dh) against anchors, clipped to the image."""
        size = anchors[:, 2:] - anchors[:, :2]
        centre = anchors[:, :2] + 0.5 * size
        centre = centre + deltas[..., :2] * size
        size = size * torch.exp(deltas[..., 2:].clamp(max=math.log(1000.0 / 16)))
        boxes = torch.cat([centre - 0.5 * size, centre + 0.5 * size], -1)
        height_width = torch._shape_as_tensor(image)[2:].to(boxes.dtype)
        limit = torch.stack([height_width[1], height_width[0], height_width[1], height_width[0]])
        return torch.minimum(boxes.clamp(min=0), limit)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = DETECTOR
        per_class_nms, best_detections = _scripted_postprocess()
        features = self.backbone(image)
        b, _, h, w = features.shape
        deltas = self.box_head(features).reshape(b, self.anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        scores = self.class_head(features).reshape(b, self.anchors, self.classes, h, w)
        scores = scores.permute(0, 3, 4, 1, 2).reshape(b, -1, self.classes).sigmoid()
        boxes = self.decode(self.anchor_boxes(features), deltas * 0.1, image)
        best, top = scores.max(-1).values.topk(_topk_size(scores, cfg["pre_nms_top_n"]), dim=1)
        top_boxes = boxes.gather(1, top.unsqueeze(-1).expand(-1, -1, 4))
        top_scores = scores.gather(1, top.unsqueeze(-1).expand(-1, -1, self.classes))
        selected = per_class_nms(top_boxes, top_scores, cfg["max_per_class"], cfg["iou_threshold"],
                                 cfg["score_threshold"])
        images, labels, index = selected[:, 0], selected[:, 1], selected[:, 2]
        detection_scores = top_scores[images, index, labels]
        order = best_detections(detection_scores, cfg["max_detections"])
        images, labels, index = images[order], labels[order], index[order]
        rois = top_boxes[images, index]
        pooled = torch.ops.user_zoo.roi_align(features, rois, images, 1.0 / cfg["stride"], cfg["roi_size"],
                                              cfg["sampling_ratio"], False)
        hidden = self.roi_head(pooled)
        class_probs = self.roi_scores(hidden).softmax(-1)
        final_scores = detection_scores[order] * class_probs.gather(1, (labels + 1).unsqueeze(1)).squeeze(1)
        final_boxes = rois + self.roi_deltas(hidden) * 2.0
        return final_boxes, final_scores, labels


def _detector() -> nn.Module:
    model = Detector()
    _randomize_batchnorms(model)
    with torch.no_grad():
        model.class_head.bias.zero_()  # one prior for every class (RetinaNet's init), so all classes fire
    return model


def _detector_inputs(seed: int) -> Inputs:
    batch, height, width = ((1, 128, 160), (2, 96, 128))[seed]
    return (_randn(seed, batch, 3, height, width),)


# ---------------------------------------------------------------------------------------------
# fpn-resize: a feature pyramid whose top-down path upsamples with Resize to the lateral's size


class FeaturePyramid(nn.Module):
    """Three strided stages (C3, C4, C5), 1x1 laterals, nearest upsampling to the next level's size
    (Resize with sizes read from a Shape), 3x3 output convs: [B, 3, H, W] -> P3, P4, P5."""

    def __init__(self, channels: int = 24):
        super().__init__()
        self.c3 = nn.Sequential(conv_bn_relu(3, 16, 3, 2), conv_bn_relu(16, 24, 3, 2), conv_bn_relu(24, 24, 3, 2))
        self.c4 = conv_bn_relu(24, 32, 3, 2)
        self.c5 = conv_bn_relu(32, 48, 3, 2)
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in (24, 32, 48))
        self.outputs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(3))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.c3(images)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.laterals[2](c5)
        p4 = self.laterals[1](c4) + nn.functional.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.laterals[0](c3) + nn.functional.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        return self.outputs[0](p3), self.outputs[1](p4), self.outputs[2](p5)


def _fpn() -> nn.Module:
    model = FeaturePyramid()
    _randomize_batchnorms(model)
    return model


# ---------------------------------------------------------------------------------------------
# audio-conv1d: a wav2vec2-style feature encoder over raw samples


class AudioEncoder(nn.Module):
    """Conv1d stack over a mono waveform (GroupNorm after the first, GELU), LayerNorm, Linear:
    [1, num_samples] -> [1, frames, 64]."""

    def __init__(self, channels: int = 32, dim: int = 64):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(1, channels, 10, 5, bias=False), nn.GroupNorm(channels, channels), nn.GELU(),
            nn.Conv1d(channels, channels, 3, 2, bias=False), nn.GELU(),
            nn.Conv1d(channels, channels, 2, 2, bias=False), nn.GELU(),
        )
        self.norm = nn.LayerNorm(channels)
        self.projection = nn.Linear(channels, dim)

    def forward(self, waveform: Tensor) -> Tensor:
        features = self.convs(waveform.unsqueeze(1)).transpose(1, 2)
        return self.projection(self.norm(features))


# ---------------------------------------------------------------------------------------------
# early-exit-if: an early-exit classifier, the branch taken depends on the data


class EarlyExit(nn.Module):
    """A CNN with an early classifier: when every image's top early probability passes the threshold
    the early logits are returned, else the deeper stage's (a data-dependent ONNX If)."""

    def __init__(self, classes: int = 10, threshold: float = 0.9):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.early = nn.Linear(32, classes)
        self.deep = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU())
        self.late = nn.Linear(64, classes)
        self.threshold = threshold

    def forward(self, pixel_values: Tensor) -> Tensor:
        features = self.stem(pixel_values)
        early = self.early(features.mean(dim=[2, 3]))
        if bool(early.softmax(-1).max(-1).values.min() > self.threshold):
            return early
        return self.late(self.deep(features).mean(dim=[2, 3]))


def _early_exit() -> nn.Module:
    """Scripted (the branch must export as an If); the early head sharpened as a trained one is
    confident, with the threshold between kiln's default sample (early exit) and input set 1 (deep)."""
    model = EarlyExit(threshold=EARLY_EXIT["threshold"])
    with torch.no_grad():
        model.early.weight.mul_(EARLY_EXIT["early_weight_scale"])
    return torch.jit.script(model.eval())


EARLY_EXIT = {"classes": 10, "threshold": 0.83, "early_weight_scale": 40.0}


# ---------------------------------------------------------------------------------------------
# The zoo

_PRESERVE_BATCHNORM = {"training": torch.onnx.TrainingMode.PRESERVE}
_TRAINING_EXPORT = {"training": torch.onnx.TrainingMode.TRAINING}


def _images(shapes: Sequence[tuple[int, ...]]) -> Callable[[int], Inputs]:
    return lambda seed: (_randn(seed, *shapes[seed]),)


USER_ZOO: dict[str, UserZooEntry] = {e.name: e for e in (
    UserZooEntry(
        "crnn-captcha", "ddddocr-like CRNN: Conv/BN/ReLU/MaxPool, 2-layer bidirectional LSTM, Linear, log_softmax "
        "over a grey [1, 1, 64, image_width] image", 12, ("input1",), ("output",),
        {"input1": {3: "image_width"}, "output": {0: "sequence"}}, _crnn, _images([(1, 1, 64, 128), (1, 1, 64, 200)]),
        config={"classes": 64, "hidden": 64, "channels": [16, 32, 48, 48]}),
    UserZooEntry(
        "gru-tagger", "token ids [batch, sequence] -> Embedding(500) -> bidirectional GRU -> Linear to 9 tags", 11,
        ("input_ids",), ("logits",), {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
        GRUTagger, lambda seed: _tokens(seed, *((1, 12), (3, 20))[seed]),
        config={"vocab": GRU_VOCAB, "embed": 32, "hidden": 48, "tags": 9}),
    UserZooEntry(
        "textcnn-max-len", "text CNN with learned positions for at most 64 tokens, exported with dynamic batch and "
        "sequence (longer inputs fail in the position Gather)", 11, ("input_ids",), ("logits",),
        {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}, lambda: TextCNN(**TEXTCNN),
        lambda seed: (torch.randint(0, TEXTCNN["vocab"], ((1, 32), (4, 64))[seed], generator=_generator(seed)),),
        config=TEXTCNN),
    UserZooEntry(
        "cnn-dynamic-hw", "small ResNet (basic blocks, strided convs, projection shortcuts, global average pool, "
        "Linear) on [batch, 3, height, width]", 13, ("image",), ("logits",),
        {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}, _resnet,
        _images([(1, 3, 96, 128), (2, 3, 64, 80)]), config={"widths": [16, 32, 64], "blocks": 4, "classes": 10}),
    UserZooEntry(
        "ocr-cls-neg-dims", "PaddleOCR-like direction classifier (MobileNetV3 blocks, hardswish, squeeze-excite, "
        "softmax) whose input is written [-1, 3, ?, ?] as Paddle exports do", 11,
        ("x",), ("save_infer_model/scale_0.tmp_1",),
        {"x": {0: "batch", 2: "height", 3: "width"}, "save_infer_model/scale_0.tmp_1": {0: "batch"}},
        _direction_classifier, _images([(1, 3, 48, 192), (2, 3, 48, 160)]),
        config={"stem": 8, "blocks": [[8, 16, 8, 1], [8, 24, 16, 2], [16, 48, 16, 1]], "paddle_dims": True},
        edit_proto=_paddle_dims),
    UserZooEntry(
        "conv-bn-relu-bn", "Conv-BN-ReLU-BN x2 then Conv, NCHW with dynamic batch; BatchNormalization nodes kept "
        "(exported with TrainingMode.PRESERVE of the eval module)", 13, ("input",), ("output",),
        {"input": {0: "batch"}, "output": {0: "batch"}}, _conv_bn_relu_bn, _images([(1, 3, 32, 32), (4, 3, 32, 32)]),
        config={"channels": [16, 32, 8]}, export_options=_PRESERVE_BATCHNORM),
    UserZooEntry(
        "conv-bn-training-export", "the Conv-BN-ReLU-BN chain exported in training mode by mistake: every "
        "BatchNormalization has training_mode=1 and normalizes with the batch's statistics (nothing may fold)", 15,
        ("input",), ("output",), {"input": {0: "batch"}, "output": {0: "batch"}}, _conv_bn_relu_bn,
        _images([(2, 3, 32, 32), (4, 3, 32, 32)]), config={"channels": [16, 32, 8]}, export_options=_TRAINING_EXPORT),
    UserZooEntry(
        "bert-legacy-dynamic", "transformers BERT (2 layers, hidden 128, vocab 1000, eager attention), random init, "
        "legacy export with dynamic batch and sequence", 13, ("input_ids", "attention_mask", "token_type_ids"),
        ("last_hidden_state",),
        {**{n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids",
                                                     "last_hidden_state")}},
        _bert, _bert_inputs, config=BERT_CONFIG),
    UserZooEntry(
        "detector", "one-stage detector with a box head: backbone, anchor decode, TopK, Loop over classes around "
        "NonMaxSuppression, If, RoiAlign, Linear head on [batch, 3, height, width]", 16, ("image",),
        ("boxes", "scores", "labels"),
        {"image": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "detections"}, "scores": {0: "detections"},
         "labels": {0: "detections"}}, _detector, _detector_inputs, config=DETECTOR, setup=_detector_ops),
    UserZooEntry(
        "fpn-resize", "feature pyramid: three strided stages, 1x1 laterals, nearest Resize to the next level's "
        "size, 3x3 output convs on [batch, 3, height, width]", 11, ("images",), ("p3", "p4", "p5"),
        {"images": {0: "batch", 2: "height", 3: "width"}}, _fpn, _images([(1, 3, 128, 160), (1, 3, 96, 96)]),
        config={"channels": 24, "stages": [24, 32, 48]}),
    UserZooEntry(
        "audio-conv1d", "wav2vec2-style Conv1d feature encoder (GroupNorm, GELU, LayerNorm, Linear) over a "
        "[1, num_samples] waveform", 13, ("waveform",), ("features",),
        {"waveform": {1: "num_samples"}, "features": {1: "frames"}}, AudioEncoder,
        _images([(1, 8000), (1, 12345)]), config={"channels": 32, "dim": 64, "kernels": [[10, 5], [3, 2], [2, 2]]}),
    UserZooEntry(
        "early-exit-if", "early-exit CNN (TorchScript): an If on the early head's confidence picks the early or the "
        "deep logits, on [batch, 3, 64, 64]", 13, ("pixel_values",), ("logits",),
        {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, _early_exit,
        _images([(1, 3, 64, 64), (3, 3, 64, 64)]), config=EARLY_EXIT),
)}


# ---------------------------------------------------------------------------------------------
# Export and cache


def _numpy(values: Any) -> list[np.ndarray]:
    if isinstance(values, Tensor):
        values = (values,)
    return [v.detach().cpu().numpy() for v in values]


def export_entry(entry: UserZooEntry, module: nn.Module) -> onnx.ModelProto:
    """The legacy (TorchScript) export of `module` on input set 0, with the entry's dynamic axes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, entry.make_inputs(0), buffer, dynamo=False, opset_version=entry.opset,
                          input_names=list(entry.input_names), output_names=list(entry.output_names),
                          dynamic_axes=entry.dynamic_axes, **entry.export_options)
    proto = onnx.load_from_string(buffer.getvalue())
    if entry.edit_proto is not None:
        entry.edit_proto(proto)
    proto.graph.name = entry.name
    return proto


def _save_arrays(path: Path, sets: list[list[np.ndarray]]) -> None:
    np.savez(path, **{f"{k}_{i}": a for k, arrays in enumerate(sets) for i, a in enumerate(arrays)})


def _load_arrays(path: Path) -> list[list[np.ndarray]]:
    with np.load(path) as data:
        keys = sorted(data.files, key=lambda key: tuple(int(part) for part in key.split("_")))
        sets: dict[int, list[np.ndarray]] = collections.defaultdict(list)
        for key in keys:
            sets[int(key.split("_")[0])].append(data[key])
    return [sets[k] for k in sorted(sets)]


def _export_to(entry: UserZooEntry, folder: Path, key: dict[str, Any]) -> None:
    """Build, run and export the entry into a temporary folder, then swap it in whole."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module = entry.module()
    input_sets = [entry.make_inputs(k) for k in (0, 1)]
    # the reference runs in the mode the export records (batch statistics for a TRAINING export)
    module.train(entry.export_options.get("training") == torch.onnx.TrainingMode.TRAINING)
    with torch.no_grad():
        references = [_numpy(module(*inputs)) for inputs in input_sets]
    module.eval()
    logger.info("exporting %s (legacy exporter, opset %d)", entry.name, entry.opset)
    try:
        proto = export_entry(entry, module)
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserZooExportError(f"torch.onnx.export(dynamo=False) of user-zoo model {entry.name!r} failed: "
                                 f"{type(error).__name__}: {error}") from error
    onnx.save(proto, tmp / "model.onnx")
    _save_arrays(tmp / "inputs.npz", [_numpy(inputs) for inputs in input_sets])
    _save_arrays(tmp / "reference.npz", references)
    (tmp / "meta.json").write_text(json.dumps(key, indent=1))  # last: marks a complete folder
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)


def load_case(name: str, *, cache_dir: Path = USER_ZOO_DIR) -> UserCase:
    """The user-zoo model `name`: its cached export (made when missing or stale), input sets and
    PyTorch outputs."""
    if name not in USER_ZOO:
        raise KeyError(f"unknown user-zoo model {name!r}; known: {', '.join(USER_ZOO)}")
    entry = USER_ZOO[name]
    folder = Path(cache_dir) / name
    key = entry.key()
    with _locked(Path(cache_dir) / f".{name}.lock"):
        meta = _read_meta(folder)
        if meta != key or not (folder / "model.onnx").exists():
            if meta is not None:
                logger.info("%s: cache is stale (%s), re-exporting", name,
                            ", ".join(k for k in key if meta.get(k) != key[k]))
            _export_to(entry, folder, key)
    inputs = [dict(zip(entry.input_names, arrays)) for arrays in _load_arrays(folder / "inputs.npz")]
    return UserCase(name, entry, folder / "model.onnx", inputs, _load_arrays(folder / "reference.npz"))


# ---------------------------------------------------------------------------------------------
# Summary and check


def declared_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A graph input's dims as written: sizes (possibly -1), symbol names, or None when empty."""
    out: list[int | str | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            out.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def op_histogram(proto: onnx.ModelProto) -> collections.Counter[str]:
    """Op types of the main graph and every subgraph (Loop / If bodies)."""
    counts: collections.Counter[str] = collections.Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(proto.graph)
    return counts


def highlights(counts: collections.Counter[str], most: int = 4) -> str:
    """'Loop 1, NonMaxSuppression 1, ... | Constant 40, ...': the highlighted ops, then the most frequent."""
    named = [f"{op} {counts[op]}" for op in HIGHLIGHT_OPS if counts[op]]
    common = [f"{op} {n}" for op, n in counts.most_common() if op not in HIGHLIGHT_OPS][:most]
    return ", ".join(named) + (" | " if named and common else "") + ", ".join(common)


def ort_vs_torch(case: UserCase) -> float:
    """Max abs diff of ONNX Runtime (ENABLE_ALL, 2 threads) against PyTorch over both input sets;
    inf when an output's shape differs."""
    import kiln
    from kiln.backends.onnxruntime import create_session

    session = create_session(case.onnx_path, kiln.Target(intra_op_threads=THREADS, inter_op_threads=1))
    worst = 0.0
    for inputs, reference in zip(case.input_sets, case.references):
        for got, want in zip(session.run(None, inputs), reference):
            if got.shape != want.shape:
                return math.inf
            if want.size:
                worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
    return worst


def summary(case: UserCase) -> str:
    proto = case.proto()
    inputs = ", ".join(f"{v.name} [{', '.join('?' if d is None else str(d) for d in declared_dims(v))}]"
                       for v in proto.graph.input)
    counts = op_histogram(proto)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return (f"{case.name}: opset {opset}, inputs {inputs}, {len(proto.graph.node)} nodes "
            f"({sum(counts.values())} with subgraphs); {highlights(counts)}; "
            f"ORT vs torch max abs diff {ort_vs_torch(case):.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"user-zoo models (default: all): {', '.join(USER_ZOO)}")
    parser.add_argument("--cache-dir", type=Path, default=USER_ZOO_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(THREADS)
    failed = 0
    for name in args.names or list(USER_ZOO):
        try:
            print(summary(load_case(name, cache_dir=args.cache_dir)), flush=True)
        except Exception:
            logger.exception("%s: failed", name)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
