"""Experiment ``losses``: the gradient fields of the loss zoo.

We draw, for a target ``y ∈ ℝ²``, the gradient of each loss with
respect to ``x`` over the plane, test the claim that minimising ``log(loss)`` makes
descent overshoot the target instead of converging calmly, and check the stated
properties of the cosine and dot-product similarities.  This experiment draws
the fields (``∇_x`` for fixed ``y``; also ``∇_y`` for fixed ``x`` for
DotSim and GenSim), runs fixed-step gradient descent on MSE vs log MSE and
``1 − CosSim`` vs its log, and measures each property.  It also copies the
interactive page ``loss_field.html`` (the mouse moves ``y``) into ``out``.

The experiment in files of one job each: :mod:`.fields` computes (gradients on
grids, descents, landscapes), :mod:`.claims` measures each claim,
:mod:`.figures` draws; :func:`run` is the sequence of steps.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from blackgrad.experiments._common import write_results

from . import claims as _claims
from . import figures as _figures
from .fields import (
    DESCENT_PAIRS,
    descend,
    descents,
    grid,
    landscape,
    loss_gradient,
    overshoot_metrics,
    similarity_fields,
    x_fields,
)

__all__ = ["Config", "run", "NAME", "TITLE", "PAGE", "DESCENT_PAIRS", "descend", "loss_gradient", "overshoot_metrics"]

NAME = "losses"
TITLE = "The loss zoo: gradient fields, log-loss overshoot, similarity properties"
PAGE = "loss_field.html"


@dataclass
class Config:
    """Parameters of the ``losses`` experiment (everything in float64)."""

    target: tuple[float, float] = (1.0, 0.5)  # the fixed y of the ∇_x fields
    fixed_x: tuple[float, float] = (1.0, 0.5)  # the fixed x of the ∇_y fields
    extent: float = 2.0  # fields drawn on [-extent, extent]²
    grid_size: int = 21  # arrows per side
    background_size: int = 121  # loss heat-map pixels per side
    landscape_size: int = 241  # grid of the single-minimum check (odd: y on the grid)
    sublevel_delta: float = 0.01  # the set {loss ≤ min + delta} whose extent is measured
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)  # GenSim α drawn
    starts: tuple[tuple[float, float], ...] = (
        (-1.2, 0.9),
        (1.2, -1.0),
        (-0.6, -1.2),
        (0.0, 1.4),
    )
    step_sizes: tuple[float, ...] = (0.03, 0.1, 0.3)  # fixed steps (all < 0.5: MSE's monotone range)
    n_steps: int = 300
    norm_scales: tuple[float, ...] = (0.1, 0.5, 2.0, 10.0)  # |y| rescalings for the invariance check
    radii: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)  # |x| for the explosion check
    y_scales: tuple[float, ...] = tuple(float(s) for s in np.logspace(-2, 2, 9))
    orthogonal_dim: int = 16  # dimension of the random DotSim orthogonality check
    orthogonal_samples: int = 1000
    seed: int = 0

    @classmethod
    def quick(cls) -> "Config":
        """A few seconds: coarser grids, two step sizes, shorter descents."""
        return cls(
            grid_size=11,
            background_size=41,
            landscape_size=81,
            alphas=(0.0, 1.0, 2.0),
            step_sizes=(0.1, 0.3),
            n_steps=120,
            orthogonal_samples=200,
        )


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Draw the fields, run the descents, measure the claims; write figures, page and results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = torch.tensor(config.target, dtype=torch.float64)
    fixed_x = torch.tensor(config.fixed_x, dtype=torch.float64)
    points, _ = grid(config.extent, config.grid_size)
    result: dict = {"name": NAME, "title": TITLE, "config": asdict(config)}
    figures: list[str] = []
    claims: list[dict] = []

    # the gradient fields: ∇_x of every loss for the fixed target; ∇_x and ∇_y of DotSim and GenSim
    fields = x_fields(points, target, progress)
    figures.append(_figures.x_fields_figure(out, config, points, target, fields))
    similarity = similarity_fields(config, points, target, fixed_x, progress)
    figures.append(_figures.similarity_fields_figure(out, config, points, target, fixed_x, similarity))

    # plain vs log descent
    result["descent"], paths_of = descents(config, target, progress)
    figures.append(_figures.trajectory_figure(out, config, paths_of, target))
    for pair, (plain, logged) in DESCENT_PAIRS.items():
        claims.append(_claims.overshoot_claim(pair, plain, logged, result["descent"][pair], config))

    # MSE points straight at y
    result["mse_worst_angle_deg"], mse_claim = _claims.mse_points_at_target(points, target)
    claims.append(mse_claim)

    # cosine: invariance to |y|, explosion at 0, circular flow, anti-aligned; DotSim: orthogonal part, ∇_y scaling
    result["cosine"] = cosine = _claims.cosine_properties(config, points, target, result["descent"]["cosine"]["cosine_loss"])
    claims.extend(cosine.pop("claims"))
    result["dot_sim"] = dot = _claims.dot_properties(config, fixed_x)
    claims.extend(dot.pop("claims"))
    figures.append(_figures.cosine_figure(out, cosine, dot))

    # the single minimum of 1 − CosSim + MSE(1, DotSim)
    minima = landscape(config, target)
    figures.append(_figures.landscape_figure(out, config, minima, target))
    result["single_minimum"] = {name: {k: v for k, v in info.items() if k != "values"} for name, info in minima.items()}
    claims.append(_claims.single_minimum_claim(config, minima))

    # the two sign losses as written
    field_norms = {name: grad.norm(dim=1) for name, grad in fields.items()}
    result["sign_losses"], sign_claims = _claims.sign_losses(points, target, field_norms)
    claims.extend(sign_claims)

    _copy_page(out)
    result.update({"figures": figures, "pages": [PAGE], "claims": claims})
    return write_results(out, result)


def _copy_page(out: Path) -> None:
    """The interactive page (the mouse moves ``y``), shipped beside the experiments, into ``out``."""
    page = resources.files("blackgrad.experiments").joinpath(PAGE)
    with resources.as_file(page) as source:
        shutil.copyfile(source, out / PAGE)
