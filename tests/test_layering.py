"""DESIGN.md's layering: passes never import a backend or a runtime, backends never import
passes, ir imports neither (nor cost_model, api or cli), and inside the cost model only
`cost_model/measure/` reaches a backend or a runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KILN = Path(__file__).parents[1] / "kiln"

RUNTIMES = ("onnxruntime", "openvino", "tvm")

# layer (a folder of kiln/) -> modules none of its files may import
FORBIDDEN = {
    "ir": ("kiln.passes", "kiln.backends", "kiln.cost_model", "kiln.api", "kiln.cli", "kiln.report", *RUNTIMES),
    "passes": ("kiln.backends", "kiln.api", "kiln.cli", "kiln.cost_model.measure", *RUNTIMES),
    "cost_model": ("kiln.passes", "kiln.api", "kiln.cli", "kiln.backends", *RUNTIMES),
    "backends": ("kiln.passes", "kiln.cost_model", "kiln.api", "kiln.cli"),
    "report": ("kiln.passes", "kiln.backends", "kiln.cost_model", "kiln.api", "kiln.cli", "kiln.ir", *RUNTIMES),
}
# folders below a layer that may import what the layer otherwise may not
ALLOWED_BELOW = {
    "cost_model": {"measure": ("kiln.backends", *RUNTIMES)},
}


def imports_of(source: str) -> set[str]:
    """Absolute module names a file imports (at top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(layer: str, path: Path, source: str) -> list[str]:
    """The imports of `path` (a file of kiln/<layer>) that DESIGN's layering forbids."""
    relative = path.relative_to(KILN / layer)
    allowed: tuple[str, ...] = ()
    for folder, extra in ALLOWED_BELOW.get(layer, {}).items():
        if relative.parts[0] == folder:
            allowed = extra
    return [
        f"{path.relative_to(KILN.parent)} imports {name}"
        for name in sorted(imports_of(source))
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer])
        and not any(name == ok or name.startswith(ok + ".") for ok in allowed)
    ]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_design_allows(layer):
    files = sorted((KILN / layer).rglob("*.py"))
    assert files, f"kiln/{layer} has no modules"
    found = [v for path in files for v in violations(layer, path, path.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("layer, relative, line", [
    ("passes", "folding/constant_folding.py", "import onnxruntime"),
    ("passes", "infra/manager.py", "from onnxruntime import InferenceSession"),
    ("passes", "fusion/parallel_matmul_joining.py", "from kiln.backends.onnxruntime import session_options"),
    ("cost_model", "model.py", "import onnxruntime as ort"),
    ("cost_model", "model.py", "from kiln.backends import compile_model"),
    ("ir", "queries.py", "import tvm"),
])
def test_a_forbidden_import_is_caught(layer, relative, line):
    """The check is not vacuous: the same file with one forbidden import added fails it."""
    path = KILN / layer / relative
    assert not violations(layer, path, path.read_text())
    assert violations(layer, path, path.read_text() + "\n" + line + "\n")


def test_measurement_may_reach_the_backend():
    path = KILN / "cost_model" / "measure" / "choices.py"
    assert not violations("cost_model", path, path.read_text() + "\nimport onnxruntime\n")
