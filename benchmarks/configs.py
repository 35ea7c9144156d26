"""Every configuration the harness runs: PyTorch, ONNX Runtime and its tools, graph
simplifiers, quantizers, TVM, and kiln.

Each `Config.prepare(case, workdir)` builds a ready runner. ONNX-based configurations share one
ONNX Runtime session helper (`ort_session` / `ort_prepared`) set up as BENCHMARKS.md prescribes:
`intra_op_num_threads=THREADS`, `inter_op_num_threads=1`, sequential execution. Their timed call
is `session.run(None, feeds)` on feeds built once, so no conversion happens inside it.

Conventions for the `Prepared` facts:
- `optimize_seconds`: wall time from loading the input model to writing the output model (the
  tool's own work; validation excluded, per BENCHMARKS.md), 0 when the configuration runs the
  export as is. For torch.compile, the first (compiling) call.
- `node_count`: nodes (subgraphs included, as kiln counts them) of the ONNX model the
  configuration hands to its runtime, i.e. before the runtime's own graph optimizations.
- `model_bytes`: bytes on disk of that model, its external-data files included.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.base import THREADS, Config, ModelCase, NotApplicable, Prepared

# Tool outputs whose weights exceed this are saved with an external-data file (protobuf's
# limit for one file is 2 GiB).
_EXTERNAL_DATA_BYTES = 1_800_000_000


# ---------------------------------------------------------------------------------------------
# ONNX helpers


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of a ModelProto (initializers and attributes, subgraphs included)."""
    from onnx import external_data_helper

    return external_data_helper._get_all_tensors(model)  # noqa: SLF001 - onnx has no public equivalent


def _graph_node_count(graph: Any) -> int:
    import onnx

    count = 0
    for node in graph.node:
        count += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _graph_node_count(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(_graph_node_count(g) for g in attr.graphs)
    return count


def node_count(model: Any) -> int:
    """Nodes of a ModelProto (or of the ONNX file at a path), subgraphs included."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    return _graph_node_count(model.graph)


def onnx_file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of an ONNX file and of the external-data files it references."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    files = {path.resolve()}
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                files.add((path.parent / location).resolve())
    return sum(f.stat().st_size for f in files if f.exists())


def save_onnx(model: Any, path: Path) -> Path:
    """Save a ModelProto; weights go to `<name>.data` only when one file could not hold them."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes > _EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def ort_session(model: str | os.PathLike | bytes, level: str = "all") -> Any:
    """An ONNX Runtime CPU session with the benchmark protocol's settings (kiln's session options:
    THREADS intra-op threads, one inter-op thread, sequential execution, no spinning).

    Spinning is off because the protocol alternates sessions in one process: an idle session's
    spinning pool threads take the cores from the one being timed (`kiln.Target.allow_spinning`)."""
    import kiln
    from kiln.backends.onnxruntime import create_session

    return create_session(model, kiln.Target(intra_op_threads=THREADS, inter_op_threads=1, allow_spinning=False,
                                             graph_optimization_level=level))  # type: ignore[arg-type]


def session_feeds(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The case's inputs that the session takes (a tool may drop an unused input)."""
    feeds = {}
    for arg in session.get_inputs():
        if arg.name not in inputs:
            raise ValueError(f"The model takes an input {arg.name!r} the case does not provide "
                             f"(case inputs: {sorted(inputs)}).")
        feeds[arg.name] = np.ascontiguousarray(inputs[arg.name])
    return feeds


def ort_runner(case: ModelCase, model_path: str | os.PathLike, level: str = "all") -> Callable[[], Any]:
    """One inference of `model_path` on the case's inputs, in a new ORT session (`ort_session`)."""
    session = ort_session(model_path, level)
    feeds = session_feeds(session, case.inputs)

    def run() -> Any:
        return session.run(None, feeds)

    return run


def ort_prepared(case: ModelCase, model_path: str | os.PathLike, level: str = "all", *,
                 optimize_seconds: float = 0.0, note: str = "", nodes: int | None = None) -> Prepared:
    """A Prepared that runs `model_path` in an ORT session on the case's inputs (`nodes`: the
    node count when the caller knows it, else counted from the file)."""
    run = ort_runner(case, model_path, level)

    def outputs() -> np.ndarray:
        return np.asarray(run()[0], dtype=np.float32)

    return Prepared(run=run, outputs=outputs, optimize_seconds=optimize_seconds,
                    node_count=node_count(model_path) if nodes is None else nodes,
                    model_bytes=onnx_file_bytes(model_path), note=note, model_path=Path(model_path))


# ---------------------------------------------------------------------------------------------
# PyTorch


def _first_tensor(result: Any) -> Any:
    while isinstance(result, (tuple, list)):
        result = result[0]
    if isinstance(result, dict):
        result = next(iter(result.values()))
    return result


def _torch_outputs(result: Any) -> np.ndarray:
    return _first_tensor(result).detach().float().cpu().numpy().astype(np.float32, copy=False)


class TorchEager(Config):
    name = "torch-eager"
    description = "PyTorch eager, inference_mode"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        import torch

        torch.set_num_threads(THREADS)
        module, inputs = case.get_module().eval(), case.torch_inputs

        def run() -> Any:
            with torch.inference_mode():
                return module(**inputs)

        return Prepared(run=run, outputs=lambda: _torch_outputs(run()))


class TorchCompile(Config):
    name = "torch-compile"
    description = "torch.compile (inductor, default mode); compile time = cold first call"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        import torch
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

        torch.set_num_threads(THREADS)
        torch._dynamo.reset()  # noqa: SLF001 - compile from scratch, so the first call is the real cost
        compiled = torch.compile(case.get_module().eval())
        inputs = case.torch_inputs

        def run() -> Any:
            with torch.inference_mode():
                return compiled(**inputs)

        # An empty inductor cache: an earlier run's cached kernels would hide the compile time.
        with temporary_cache_dir(str(workdir / "inductor-cache")):
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
        return Prepared(run=run, outputs=lambda: _torch_outputs(run()), optimize_seconds=seconds,
                        note="cold inductor cache")


# ---------------------------------------------------------------------------------------------
# ONNX Runtime as is


class OrtLevel(Config):
    def __init__(self, level: str, name: str, label: str):
        self.level, self.name = level, name
        self.description = f"ONNX Runtime, graph optimization {label}"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        return ort_prepared(case, case.onnx_path, self.level)


def transformers_model_type(case: ModelCase) -> str:
    """The `onnxruntime.transformers.optimizer` model type for a case, or NotApplicable."""
    name, kind = case.name.lower(), case.kind
    tokens = [t for t in re.split(r"[^a-z0-9]+", name) if t]  # "flan-t5-small" -> flan, t5, small
    for key in ("gpt2", "vit", "swin", "bart", "t5", "phi", "qwen3", "clip"):
        if any(t.startswith(key) or (key == "gpt2" and key in t) for t in tokens):
            return key
    if kind == "audio" or "whisper" in name:
        raise NotApplicable("the transformers optimizer has no model type for Whisper's audio encoder")
    if kind in ("text-encoder", "sentence-embedding") or any(k in name for k in ("bert", "minilm", "roberta")):
        return "bert"
    if kind == "decoder":
        return "gpt2"
    raise NotApplicable(f"no transformers-optimizer model type applies to {case.name!r} (kind {kind or 'unset'!r})")


class OrtTransformers(Config):
    name = "ort-transformers"
    description = "onnxruntime.transformers.optimizer (bert/gpt2/vit fusions), then ORT ENABLE_ALL"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        from onnxruntime.transformers.optimizer import optimize_model

        model_type = transformers_model_type(case)
        out = workdir / f"{self.name}.onnx"
        started = time.perf_counter()
        optimized = optimize_model(str(case.onnx_path), model_type=model_type)
        save_onnx(optimized.model, out)
        seconds = time.perf_counter() - started
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        note = f"model_type={model_type}" + (f"; fused {fused}" if fused else "; fused nothing")
        return ort_prepared(case, out, optimize_seconds=seconds, note=note[:200])


# ---------------------------------------------------------------------------------------------
# Graph simplifiers, then ORT ENABLE_ALL


class ToolThenOrt(Config):
    """Load the export (external data included), run a graph tool, save, then ORT ENABLE_ALL."""

    def transform(self, model: Any) -> Any:
        raise NotImplementedError

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        import onnx

        out = workdir / f"{self.name}.onnx"
        started = time.perf_counter()
        model = onnx.load(str(case.onnx_path))
        save_onnx(self.transform(model), out)
        seconds = time.perf_counter() - started
        return ort_prepared(case, out, optimize_seconds=seconds)


class OnnxSim(ToolThenOrt):
    name = "onnxsim+ort"
    description = "onnxsim simplify (defaults), then ORT ENABLE_ALL"

    def transform(self, model: Any) -> Any:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim reported that the simplified model failed its check")
        return simplified


class OnnxSlim(ToolThenOrt):
    name = "onnxslim+ort"
    description = "onnxslim slim (defaults), then ORT ENABLE_ALL"

    def transform(self, model: Any) -> Any:
        import onnxslim

        return onnxslim.slim(model)


class OnnxOptimizer(ToolThenOrt):
    name = "onnxoptimizer+ort"
    description = "onnxoptimizer optimize (default passes), then ORT ENABLE_ALL"

    def transform(self, model: Any) -> Any:
        import onnxoptimizer

        return onnxoptimizer.optimize(model)


# ---------------------------------------------------------------------------------------------
# ORT quantization


def _quant_preprocess(source: Path, workdir: Path, stem: str) -> tuple[Path, str]:
    """ORT's recommended pre-processing (symbolic shape inference, basic optimization); on failure
    the raw export is quantized and the note says why."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / f"{stem}.pre.onnx"
    try:
        quant_pre_process(str(source), str(out))
        return out, ""
    except Exception as exc:  # pre-processing is advisory: quantize the export as is
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return source, f"pre-process failed ({type(exc).__name__}: {text}); quantized the export"


def ort_quantize_dynamic(source: Path, workdir: Path, stem: str, *, per_channel: bool = False) -> tuple[Path, str]:
    """ORT `quantize_dynamic` (QInt8 weights) of the pre-processed `source`, written to
    ``workdir/<stem>.onnx``; the note says when pre-processing failed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = workdir / f"{stem}.onnx"
    prepared, note = _quant_preprocess(source, workdir, stem)
    quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out, note


class OrtQuantDynamic(Config):
    name = "ort-quant-dynamic"
    precision = "int8"
    description = "ORT quantize_dynamic (QInt8 weights, pre-processed), then ORT ENABLE_ALL"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        started = time.perf_counter()
        out, note = ort_quantize_dynamic(Path(case.onnx_path), workdir, self.name)
        seconds = time.perf_counter() - started
        return ort_prepared(case, out, optimize_seconds=seconds, note=note)


class _CalibrationReader:
    """A CalibrationDataReader over the case's calibration input sets."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: list[str]):
        self._samples = [{n: np.ascontiguousarray(s[n]) for n in names} for s in samples]
        self._iter = iter(self._samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._samples)


def ort_quantize_static(source: Path, workdir: Path, stem: str, calibration: list[dict[str, np.ndarray]], *,
                        method: str = "MinMax") -> tuple[Path, str]:
    """ORT `quantize_static` QDQ (U8S8, per-channel weights, `method` calibration: "MinMax" or
    "Percentile") of the pre-processed `source` over the `calibration` input sets, written to
    ``workdir/<stem>.onnx``; the note says when pre-processing failed."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError(f"{stem} needs calibration samples (none given)")
    graph = onnx.load(str(source), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    reader_cls = type("CaseCalibrationReader", (_CalibrationReader, CalibrationDataReader), {})
    out = workdir / f"{stem}.onnx"
    prepared, note = _quant_preprocess(source, workdir, stem)
    # ORT's CPU guidance: uint8 activations with int8 weights (U8S8) is the VNNI fast path.
    quantize_static(str(prepared), str(out), reader_cls(calibration, names), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod[method])
    return out, note


class OrtQuantStatic(Config):
    name = "ort-quant-static"
    precision = "int8"
    description = "ORT quantize_static QDQ (U8S8, per-channel weights, MinMax calibration), then ORT ENABLE_ALL"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        started = time.perf_counter()
        out, note = ort_quantize_static(Path(case.onnx_path), workdir, self.name, case.calibration)
        seconds = time.perf_counter() - started
        return ort_prepared(case, out, optimize_seconds=seconds,
                            note=f"{len(case.calibration)} calibration samples" + (f"; {note}" if note else ""))


def ort_matmul_nbits(source: Path, out: Path, *, bits: int = 4, block_size: int = 32,
                     accuracy_level: int | None = None) -> int:
    """ORT `MatMulNBitsQuantizer` (symmetric, `bits` 4 or 8, blocks of `block_size` along K) of
    `source`'s MatMul weights, written to `out`; how many MatMulNBits it made (0: nothing to
    quantize, e.g. linears exported as Gemm)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level)
    quantizer.process()
    save_onnx(quantizer.model.model, out)
    return sum(1 for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")


class OrtMatMulNBits(Config):
    name = "ort-matmulnbits"
    precision = "int4"
    description = "ORT MatMulNBitsQuantizer (int4, block 32, symmetric; MatMul weights), then ORT ENABLE_ALL"

    def __init__(self, accuracy_level: int | None = None):
        self.accuracy_level = accuracy_level

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        out = workdir / f"{self.name}.onnx"
        started = time.perf_counter()
        quantized = ort_matmul_nbits(Path(case.onnx_path), out, accuracy_level=self.accuracy_level)
        seconds = time.perf_counter() - started
        if not quantized:
            raise NotApplicable("no MatMul with a constant 2-D weight to quantize")
        return ort_prepared(case, out, optimize_seconds=seconds, note=f"{quantized} MatMulNBits")


# ---------------------------------------------------------------------------------------------
# TVM Relax


def tvm_target() -> Any:
    """An llvm target for this CPU: the dict form with the host's mcpu, else plain llvm."""
    import tvm

    try:
        codegen = tvm.target.codegen
        mcpu = str(codegen.llvm_get_system_cpu())
        if mcpu and mcpu != "generic" and codegen.llvm_is_valid_cpu(mcpu, codegen.llvm_get_system_triple()):
            return tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    except Exception:  # an older API or an unknown CPU name: fall back to generic llvm
        pass
    return tvm.target.Target({"kind": "llvm"})


class TvmRelaxUntuned(Config):
    name = "tvm-relax-untuned"
    description = "TVM Relax (from_onnx, relax.build llvm -mcpu=host, default pipeline), no schedules"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
        try:
            import tvm
            from tvm import relax
            from tvm.relax.frontend.onnx import from_onnx
        except ImportError as exc:
            raise RuntimeError(f"TVM is not installed (pip install apache-tvm): {exc}") from exc
        import onnx

        started = time.perf_counter()
        model = onnx.load(str(case.onnx_path))
        initializers = {t.name for t in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in initializers]
        missing = [n for n in names if n not in case.inputs]
        if missing:
            raise ValueError(f"The model takes inputs {missing} the case does not provide.")
        shapes = {n: list(case.inputs[n].shape) for n in names}
        dtypes = {n: str(case.inputs[n].dtype) for n in names}
        mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes)
        del model
        target = tvm_target()
        executable = relax.build(mod, target=target)
        seconds = time.perf_counter() - started
        config_threadpool = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if config_threadpool is not None:
            config_threadpool(0, THREADS)  # affinity mode 0 (big cores), THREADS workers
        device = tvm.cpu()
        vm = relax.VirtualMachine(executable, device)
        main = vm["main"]
        args = [tvm.runtime.tensor(np.ascontiguousarray(case.inputs[n]), device) for n in names]

        def run() -> Any:
            return main(*args)

        def outputs() -> np.ndarray:
            return np.asarray(_first_tensor(run()).numpy(), dtype=np.float32)

        mcpu = target.attrs.get("mcpu", "") if hasattr(target, "attrs") else ""
        return Prepared(run=run, outputs=outputs, optimize_seconds=seconds,
                        note=f"untuned; llvm{' -mcpu=' + str(mcpu) if mcpu else ''}")


# ---------------------------------------------------------------------------------------------
# OpenVINO


def openvino_properties(precision: str | None, **extra: Any) -> dict[str, Any]:
    """OpenVINO CPU compile properties of the protocol: `THREADS` inference threads, one stream,
    the LATENCY hint; `precision` "f32", "bf16" or "f16" sets the inference precision (None: the
    CPU's default); `extra` adds properties."""
    properties: dict[str, Any] = {"INFERENCE_NUM_THREADS": THREADS, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        properties["INFERENCE_PRECISION_HINT"] = precision
    return {**properties, **extra}


def nncf_int8_model(case: ModelCase, calibration: list[dict[str, np.ndarray]] | None = None) -> Any:
    """NNCF post-training int8 of the case's export as an OpenVINO model: `nncf.quantize` on
    `calibration` (default: the case's calibration samples), model_type TRANSFORMER for
    transformers."""
    import nncf
    import openvino as ov

    samples = case.calibration if calibration is None else calibration
    if not samples:
        raise ValueError("nncf-int8+openvino needs calibration samples (case.calibration is empty)")
    model = ov.Core().read_model(str(case.onnx_path))
    names = {name for port in model.inputs for name in port.get_names()}
    dataset = nncf.Dataset(samples, lambda sample: {k: v for k, v in sample.items() if k in names})
    return nncf.quantize(model, dataset, subset_size=len(samples),
                         model_type=nncf.ModelType.TRANSFORMER if is_transformer(case) else None)


def is_transformer(case: ModelCase) -> bool:
    """Whether NNCF should treat the case as a transformer (its sensitive ops kept in fp32)."""
    return case.kind in _TRANSFORMER_KINDS or "vit" in case.name


def openvino_prepared(case: ModelCase, model_path: str | os.PathLike, precision: str | None, *,
                      optimize_seconds: float = 0.0, note: str = "", nodes: int | None = None) -> Prepared:
    """A Prepared that runs `model_path` compiled by OpenVINO for the CPU, set up as the ORT
    sessions are: `THREADS` inference threads, one stream, the LATENCY hint; `precision` "f32",
    "bf16" or "f16" sets the inference precision, None leaves OpenVINO's default for this CPU.
    The timed call is one synchronous `infer` on feeds built once."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model_path)), "CPU", openvino_properties(precision))
    request = compiled.create_infer_request()
    names = {name for port in compiled.inputs for name in port.get_names()}
    feeds = {name: np.ascontiguousarray(value) for name, value in case.inputs.items() if name in names}
    first = compiled.outputs[0]

    def run() -> Any:
        return request.infer(feeds)

    def outputs() -> np.ndarray:
        return np.asarray(run()[first], dtype=np.float32)

    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16", "f16"
    onnx_file = Path(model_path).suffix == ".onnx"  # else OpenVINO's own IR (.xml + .bin): the caller sizes it
    return Prepared(run=run, outputs=outputs, optimize_seconds=optimize_seconds,
                    node_count=node_count(model_path) if nodes is None else nodes,
                    model_bytes=onnx_file_bytes(model_path) if onnx_file else 0,
                    note=" ".join(filter(None, [note, f"precision {used}"])), model_path=Path(model_path))


def _openvino_cpu_default_precision() -> str:
    """The inference precision OpenVINO's CPU plugin picks when none is set ("bf16", "f32", ...)."""
    try:
        import openvino as ov

        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32", "f16"
    except Exception:  # noqa: BLE001 - OpenVINO missing or unable to answer: the config is not applicable anyway
        return "f32"


class OpenVINO(Config):
    def __init__(self, precision: str | None, name: str, label: str):
        self.openvino_precision, self.name = precision, name
        self.description = f"OpenVINO CPU, {label}"

    @functools.cached_property
    def precision(self) -> str:  # type: ignore[override]
        """The precision OpenVINO runs at; the default hint's is the CPU's (bf16 where it has bf16
        units, else f32), asked on first use so importing the configs does not import OpenVINO."""
        return {"f16": "fp16", "bf16": "bf16"}.get(self.openvino_precision or _openvino_cpu_default_precision(), "fp32")

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        return openvino_prepared(case, case.onnx_path, self.openvino_precision)


#: zoo kinds that are transformers (NNCF's TRANSFORMER model type keeps their sensitive ops in fp32)
_TRANSFORMER_KINDS = frozenset({"text-encoder", "decoder", "sentence-embedding", "audio"})


class NncfInt8OpenVINO(Config):
    name = "nncf-int8+openvino"
    precision = "int8"
    description = ("NNCF post-training int8 (nncf.quantize on the OpenVINO model with the case's calibration "
                   "samples; model_type TRANSFORMER for transformers), then OpenVINO CPU f32")

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        import openvino as ov

        started = time.perf_counter()
        quantized = nncf_int8_model(case)
        transformer = is_transformer(case)
        path = workdir / f"{self.name}.xml"
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        seconds = time.perf_counter() - started
        note = f"{len(case.calibration)} calibration samples" + ("; model_type TRANSFORMER" if transformer else "")
        prepared = openvino_prepared(case, path, "f32", optimize_seconds=seconds, note=note,
                                     nodes=len(quantized.get_ordered_ops()))
        prepared.model_bytes = path.stat().st_size + path.with_suffix(".bin").stat().st_size
        return prepared


# ---------------------------------------------------------------------------------------------
# kiln


class Kiln(Config):
    def __init__(self, level: int, backend: str = "onnxruntime"):
        self.level, self.backend = level, backend
        self.name = f"kiln-l{level}" + ("" if backend == "onnxruntime" else f"-{backend}")
        runtime = "ORT ENABLE_ALL" if backend == "onnxruntime" else "OpenVINO CPU f32"
        self.description = f"kiln.optimize level {level} (validated), then {runtime}"

    def prepare(self, case: ModelCase, workdir: Path) -> Prepared:
        import kiln

        if self.backend == "onnxruntime":
            target = kiln.Target(intra_op_threads=THREADS, inter_op_threads=1, graph_optimization_level="all",
                                 allow_spinning=False)  # as ort_session: the protocol alternates sessions
        else:
            target = kiln.Target(backend=self.backend, intra_op_threads=THREADS)  # type: ignore[arg-type]
        started = time.perf_counter()
        optimized = kiln.optimize(str(case.onnx_path), level=self.level, sample_inputs=case.inputs, target=target)
        path = optimized.save(workdir / f"{self.name}.onnx")
        wall = time.perf_counter() - started
        validation = optimized.report.validation_seconds
        # Time the saved file in a fresh session, as every peer's output is timed: the graph is
        # what is compared, not the session kiln.optimize built among its own allocations
        # (that session can run the same kernels measurably slower; benchmarks/results/notes.md).
        note = f"validation {validation:.2f} s excluded"
        if self.backend == "openvino":
            return openvino_prepared(case, path, "f32", optimize_seconds=wall - validation,
                                     nodes=optimized.report.nodes_after, note=note)
        return ort_prepared(case, path, optimize_seconds=wall - validation, nodes=optimized.report.nodes_after,
                            note=note)


# ---------------------------------------------------------------------------------------------


def _configs() -> dict[str, Config]:
    configs: list[Config] = [
        TorchEager(),
        TorchCompile(),
        OrtLevel("disable", "ort-disable", "DISABLE_ALL"),
        OrtLevel("basic", "ort-basic", "ENABLE_BASIC"),
        OrtLevel("all", "ort-all", "ENABLE_ALL"),
        OrtTransformers(),
        OnnxSim(),
        OnnxSlim(),
        OnnxOptimizer(),
        OrtQuantDynamic(),
        OrtQuantStatic(),
        OrtMatMulNBits(),
        TvmRelaxUntuned(),
        OpenVINO("f32", "openvino-fp32", "f32 inference precision"),
        OpenVINO("f16", "openvino-f16", "f16 inference precision"),
        OpenVINO(None, "openvino-bf16", "its default inference precision (bf16 where the CPU has bf16 units)"),
        NncfInt8OpenVINO(),
        Kiln(0),
        Kiln(1),
        Kiln(2),
        Kiln(2, "openvino"),
    ]
    return {c.name: c for c in configs}


CONFIGS: dict[str, Config] = _configs()
