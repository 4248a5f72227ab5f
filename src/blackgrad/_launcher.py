"""The ``blackgrad`` command's entry point, importable without the ``bench`` extra.

The command line (:mod:`blackgrad.cli`) is built on typer, and its demo,
benchmark, experiments and reports need scikit-learn, matplotlib, tqdm and
cma: the ``bench`` extra.  On a core install (``pip install blackgrad``) this
launcher says so in one line instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

#: the install command that brings the harness
INSTALL = "pip install 'blackgrad[bench]'"

#: import name -> the distribution that provides it, for everything in the ``bench`` extra
HARNESS = {"typer": "typer", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm", "cma": "cma"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed installation counts as absent
        return False


def missing_harness() -> list[str]:
    """The distributions of the ``bench`` extra that are not installed (empty when all are)."""
    return [dist for module, dist in HARNESS.items() if not installed(module)]


def main() -> None:
    """Run the ``blackgrad`` command, or end with a one-line error naming the extra it needs."""
    if not installed("typer"):
        sys.stderr.write(f"error: the blackgrad command needs the bench extra (typer is not installed): {INSTALL}\n")
        raise SystemExit(1)
    from .cli import app

    app()


if __name__ == "__main__":  # pragma: no cover
    main()
