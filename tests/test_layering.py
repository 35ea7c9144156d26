"""DESIGN.md's layering: passes never import backends, backends never import passes, ir imports
neither (nor cost_model, api or cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KILN = Path(__file__).parents[1] / "kiln"

FORBIDDEN = {
    "ir": ("kiln.passes", "kiln.backends", "kiln.cost_model", "kiln.api", "kiln.cli", "kiln.report"),
    "passes": ("kiln.backends", "kiln.api", "kiln.cli"),
    "cost_model": ("kiln.passes", "kiln.api", "kiln.cli"),
    "backends": ("kiln.passes", "kiln.cost_model", "kiln.api", "kiln.cli"),
    "report": ("kiln.passes", "kiln.backends", "kiln.cost_model", "kiln.api", "kiln.cli", "kiln.ir"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_design_allows(layer):
    files = sorted((KILN / layer).rglob("*.py"))
    assert files, f"kiln/{layer} has no modules"
    violations = [
        f"{path.relative_to(KILN.parent)} imports {name}"
        for path in files
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer])
    ]
    assert not violations, "\n".join(violations)
