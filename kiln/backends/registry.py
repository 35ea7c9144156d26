"""The backends kiln knows, by name, and which of them this environment has installed.

A leaf module (no runtime is imported here): `Target` checks its backend against it when it is
built, so an unknown or uninstalled backend fails at once with the list of installed ones, not at
the first call into the runtime.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from kiln.errors import BackendError

__all__ = ["BackendInfo", "backend_module", "check_backend", "installed_backends", "known_backends",
           "register_backend"]


@dataclass(frozen=True)
class BackendInfo:
    """A backend: the kiln module whose ``compile(model, target)`` returns an `Executable`, the
    Python module of the runtime it needs, and how to install that runtime."""

    name: str
    module: str
    runtime: str
    install: str


_BACKENDS: dict[str, BackendInfo] = {}


def register_backend(info: BackendInfo) -> None:
    """Make `info.name` a backend `Target` and `compile_model` accept."""
    _BACKENDS[info.name] = info


register_backend(BackendInfo("onnxruntime", "kiln.backends.onnxruntime", "onnxruntime",
                             "pip install onnxruntime (a dependency of kiln)"))
register_backend(BackendInfo("openvino", "kiln.backends.openvino", "openvino", "pip install 'kiln[openvino]'"))


def known_backends() -> list[str]:
    """Every registered backend, installed or not."""
    return list(_BACKENDS)


@functools.lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def installed_backends() -> list[str]:
    """The registered backends whose runtime this environment can import."""
    return [name for name, info in _BACKENDS.items() if _importable(info.runtime)]


def check_backend(name: str) -> BackendInfo:
    """`name`'s registration; raises `BackendError` naming the installed backends when it is not a
    backend kiln knows or its runtime is not installed."""
    info = _BACKENDS.get(name)
    if info is not None and _importable(info.runtime):
        return info
    installed = ", ".join(installed_backends()) or "none"
    if info is None:
        raise BackendError(f"Unknown backend {name!r}. kiln knows {', '.join(known_backends())}; "
                           f"installed here: {installed}.")
    raise BackendError(f"Backend {name!r} is not installed (no {info.runtime!r} module): {info.install}. "
                       f"Installed here: {installed}.")


def backend_module(name: str) -> ModuleType:
    """The kiln module of backend `name` (checked first)."""
    return importlib.import_module(check_backend(name).module)
