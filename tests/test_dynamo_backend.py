"""torch.compile(model, backend="kiln") runs through kiln and ONNX Runtime."""

from __future__ import annotations

from importlib.metadata import entry_points

import torch

from kiln.dynamo import kiln_backend


def test_entry_point_is_registered():
    names = {ep.name: ep.value for ep in entry_points(group="torch_dynamo_backends")}
    assert names.get("kiln") == "kiln.dynamo:kiln_backend"


def test_torch_compile_with_kiln_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(3, 16)
    compiled_graphs = []

    def spy(gm, example_inputs):
        fn = kiln_backend(gm, example_inputs)
        compiled_graphs.append(fn)
        return fn

    compiled = torch.compile(model, backend=spy, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    assert compiled_graphs and hasattr(compiled_graphs[0], "kiln_model"), "the graph must run through kiln"
    assert compiled_graphs[0].kiln_model.report.validated
    # And by its registered name.
    torch._dynamo.reset()
    by_name = torch.compile(model, backend="kiln", dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(by_name(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_compile_runs_on_openvino_when_asked():
    import pytest

    pytest.importorskip("openvino")
    from kiln.errors import BackendError

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(3, 16)
    compiled = torch.compile(model, backend="kiln", options={"backend": "openvino"}, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    gm = torch.fx.symbolic_trace(model)
    assert kiln_backend(gm, [x], backend="openvino").kiln_model.target.backend == "openvino"
    with pytest.raises(BackendError, match="Unknown backend 'openvin'"):
        kiln_backend(gm, [x], backend="openvin")
