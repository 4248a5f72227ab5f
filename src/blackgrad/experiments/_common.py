"""Helpers shared by the experiments: result files, claims, figures and progress bars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm


def claim(statement: str, measured: str, holds: bool) -> dict[str, Any]:
    """One row of an experiment's claims table.

    ``statement`` is the claim under test, quoted or paraphrased; ``measured`` states what this
    run measured (with numbers); ``holds`` says whether the measurement supports
    the claim.  The report prints disagreements plainly.
    """
    return {"claim": statement, "measured": measured, "holds": bool(holds)}


def progress(iterable: Iterable, enabled: bool = True, **kwargs) -> Iterable:
    """A tqdm progress bar that can be switched off (tests, quiet runs)."""
    return tqdm(iterable, disable=not enabled, leave=False, **kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and torch tensors
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_results(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` as ``out/results.json`` and return it unchanged."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_jsonable(result), indent=2))
    return result


def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes, as ``matplotlib.pyplot.subplots`` makes them, but outside pyplot.

    The figure belongs to no pyplot window and no GUI backend: nothing is
    chosen or switched (no ``matplotlib.use``), so an experiment run inside a
    notebook or a GUI session leaves its backend alone, and :func:`save_figure`
    renders the PNG with Agg whatever the backend is.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig, out: Path, name: str) -> str:
    """Save a figure from :func:`subplots` as ``out/name`` (PNG), return the file name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    return name
