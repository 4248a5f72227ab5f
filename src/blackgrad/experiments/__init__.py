"""Reproducible experiments behind the library's design: each tests stated claims with numbers.

Each experiment is a module with a ``Config`` dataclass (``Config.quick()`` gives
the small variant used by ``--quick`` and the tests) and a function
``run(config, out, progress=True) -> dict`` that writes ``results.json`` and PNG
figures into the folder ``out`` and returns the same dictionary.  The result
holds a ``claims`` list: each entry states a claim, what we
measured, and whether the measurement supports it (see :func:`claim`).

The library core never imports this package.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: experiment name (as typed on the command line) -> module implementing it
EXPERIMENTS: dict[str, str] = {
    "autodiff-basics": "blackgrad.experiments.autodiff_basics",
    "losses": "blackgrad.experiments.losses",
    "activations": "blackgrad.experiments.activations",
    "destroy-jacobian": "blackgrad.experiments.destroy_jacobian",
    "restore-jacobian": "blackgrad.experiments.restore_jacobian",
    "backward-architectures": "blackgrad.experiments.backward_architectures",
}


def available() -> list[str]:
    """Names of the experiments whose module is present in this installation."""
    names = []
    for name, module in EXPERIMENTS.items():
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def load(name: str) -> ModuleType:
    """Import the module of experiment ``name``; a clear error for unknown names."""
    if name not in EXPERIMENTS:
        known = ", ".join(EXPERIMENTS)
        raise KeyError(f"unknown experiment {name!r}; known experiments: {known}")
    return importlib.import_module(EXPERIMENTS[name])
