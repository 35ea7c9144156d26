"""OpenVINO backend (the ``openvino`` extra): the ONNX frontend reads the model, the CPU plugin
compiles it with the threads, performance hint, inference precision and streams the `Target`
sets (`executable`)."""

from kiln.backends.openvino.executable import OpenVINOExecutable, compile, compile_properties

__all__ = ["OpenVINOExecutable", "compile", "compile_properties"]
