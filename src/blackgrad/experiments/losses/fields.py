"""What the ``losses`` experiment computes: gradients on grids, fixed-step descents, landscapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from blackgrad import losses as L
from blackgrad.experiments import _common

if TYPE_CHECKING:
    from . import Config

#: the plain / log pairs compared by gradient descent
DESCENT_PAIRS = {
    "mse": ("mse", "log_mse"),
    "cosine": ("cosine_loss", "log_cosine_loss"),
}


# ----------------------------------------------------------------------------- fields


def grid(extent: float, size: int) -> tuple[Tensor, np.ndarray]:
    """``size × size`` points of ``[-extent, extent]²`` as a ``(size², 2)`` tensor and the axis."""
    axis = np.linspace(-extent, extent, size)
    xx, yy = np.meshgrid(axis, axis)
    points = torch.tensor(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=torch.float64)
    return points, axis


def loss_gradient(
    loss: Callable[..., Tensor], x: Tensor, y: Tensor, wrt: str = "x"
) -> tuple[Tensor, Tensor]:
    """Per-sample loss values and their gradient w.r.t. ``x`` or ``y`` (same shape as that argument).

    Each row of the batch is an independent sample (``reduction="none"``), so the
    gradient of the summed losses is the per-sample gradient.
    """
    x = x.detach().clone().requires_grad_(wrt == "x")
    y = y.detach().clone().requires_grad_(wrt == "y")
    x_b, y_b = torch.broadcast_tensors(x, y)
    values = loss(x_b, y_b, reduction="none")
    (grad,) = torch.autograd.grad(values.sum(), x if wrt == "x" else y)
    return values.detach(), grad


def background(loss, extent: float, size: int, other: Tensor, wrt: str) -> np.ndarray:
    """Loss values on a ``size × size`` image, with ``other`` (y or x) fixed."""
    points, _ = grid(extent, size)
    with torch.no_grad():
        if wrt == "x":
            values = loss(points, other.expand_as(points), reduction="none")
        else:
            values = loss(other.expand_as(points), points, reduction="none")
    values = values.reshape(size, size).numpy()
    # clip to the 1–99 percentiles: a pole (|y| → 0 for DotSim) would flatten the shading
    low, high = np.percentile(values, [1, 99])
    return np.clip(values, low, high)


def gen_sim_at(alpha: float) -> Callable[..., Tensor]:
    """``gen_sim_loss`` at one ``alpha``, with the loss zoo's signature."""

    def loss(x, y, reduction="mean"):
        return L.gen_sim_loss(x, y, alpha=alpha, reduction=reduction)

    return loss


def similarity_losses(config: Config) -> dict[str, Callable[..., Tensor]]:
    """DotSim and GenSim at every ``alpha`` drawn: the losses whose ``∇_y`` field is drawn too."""
    losses = {"mse_dot": L.mse_dot}
    losses.update({f"gen_sim_loss α={a:g}": gen_sim_at(a) for a in config.alphas})
    return losses


def x_fields(points: Tensor, target: Tensor, progress: bool) -> dict[str, Tensor]:
    """``∇_x`` of every loss of the zoo at ``points``, for the fixed ``target``."""
    fields = {}
    for name in _common.progress(list(L.LOSSES), progress, desc="∇_x fields"):
        _, fields[name] = loss_gradient(L.LOSSES[name], points, target, wrt="x")
    return fields


def similarity_fields(
    config: Config, points: Tensor, target: Tensor, fixed_x: Tensor, progress: bool
) -> dict[str, tuple[Tensor, Tensor]]:
    """DotSim and GenSim: ``(∇_x for the fixed target, ∇_y for the fixed x)`` at ``points``."""
    fields = {}
    for name, loss in _common.progress(similarity_losses(config).items(), progress, desc="∇_y fields"):
        _, grad_x = loss_gradient(loss, points, target, wrt="x")
        _, grad_y = loss_gradient(loss, fixed_x, points, wrt="y")
        fields[name] = (grad_x, grad_y)
    return fields


# ----------------------------------------------------------------------------- descent


def descend(
    loss: Callable[..., Tensor], starts: Tensor, target: Tensor, step_sizes: Tensor, n_steps: int,
    show_progress: bool = False, desc: str = "",
) -> Tensor:
    """Fixed-step gradient descent ``x ← x − η ∇_x loss(x, y)`` for every step size and start.

    Returns the paths, shape ``(len(step_sizes), len(starts), n_steps + 1, 2)``.
    """
    x = starts.expand(len(step_sizes), *starts.shape).clone()
    path = [x]
    for _ in _common.progress(range(n_steps), show_progress, desc=desc):
        _, grad = loss_gradient(loss, x, target, wrt="x")
        x = x - step_sizes[:, None, None] * grad
        path.append(x)
    return torch.stack(path, dim=2)


def signed_errors(pair: str, paths: Tensor, target: Tensor) -> Tensor:
    """The error that the descent should drive to 0, signed so that crossing the target flips it.

    MSE pair: the displacement ``x − y`` projected on its initial direction (both
    losses move ``x`` along that line).  Cosine pair: the signed angle from ``y``
    to ``x``.
    """
    if pair == "mse":
        error = paths - target
        first = error[..., :1, :]
        return (error * first).sum(-1) / first.norm(dim=-1)
    cross = target[0] * paths[..., 1] - target[1] * paths[..., 0]
    return torch.atan2(cross, (paths * target).sum(-1))


def overshoot_metrics(signed_error: np.ndarray) -> dict[str, float]:
    """Summary of one trajectory's signed error ``e_0 … e_T``.

    ``sign_changes``: how often the error crosses 0 (the target is passed);
    ``max_overshoot``: the furthest the error goes past 0, opposite to ``e_0``;
    ``increases``: steps at which ``|e|`` grows; ``final``: ``|e_T|``.
    """
    e = signed_error
    past_target = -np.sign(e[0]) * e
    return {
        "sign_changes": int(np.sum(e[:-1] * e[1:] < 0)),
        "max_overshoot": float(max(0.0, past_target.max())),
        "increases": int(np.sum(np.abs(e[1:]) > np.abs(e[:-1]))),
        "final": float(abs(e[-1])),
    }


def descents(config: Config, target: Tensor, progress: bool) -> tuple[dict, dict[str, Tensor]]:
    """Every plain / log pair descended from every start at every step size.

    Returns the overshoot metrics of each run (``pair -> loss -> rows``) and the
    paths of each loss (for the figure).
    """
    starts = torch.tensor(config.starts, dtype=target.dtype)
    steps = torch.tensor(config.step_sizes, dtype=target.dtype)
    runs: dict = {}
    paths_of: dict = {}
    for pair, (plain, logged) in DESCENT_PAIRS.items():
        runs[pair] = {}
        for name in (plain, logged):
            paths = descend(L.LOSSES[name], starts, target, steps, config.n_steps, progress, name)
            paths_of[name] = paths
            runs[pair][name] = _run_rows(config, pair, paths, target)
    return runs, paths_of


def _run_rows(config: Config, pair: str, paths: Tensor, target: Tensor) -> list[dict]:
    """One row per (step size, start): its overshoot metrics (and the cosine pair's norm growth)."""
    errors = signed_errors(pair, paths, target).numpy()
    norms = paths.norm(dim=-1)
    rows = []
    for k, eta in enumerate(config.step_sizes):
        for s, start in enumerate(config.starts):
            row = {"step_size": float(eta), "start": list(start), **overshoot_metrics(errors[k, s])}
            if pair == "cosine":  # the flow keeps |x|; fixed steps let it grow
                row["norm_growth"] = float(norms[k, s, -1] / norms[k, s, 0] - 1)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- landscape


def strict_local_minima(values: np.ndarray) -> np.ndarray:
    """Indices ``(i, j)`` of interior grid points strictly below their 8 neighbours."""
    centre = values[1:-1, 1:-1]
    is_min = np.ones_like(centre, dtype=bool)
    n, m = values.shape
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= centre < values[1 + di : n - 1 + di, 1 + dj : m - 1 + dj]
    return np.argwhere(is_min) + 1


def diameter(points: np.ndarray) -> float:
    """Largest distance between two of ``points``: the widest of 64 projections (within 0.03 %)."""
    if len(points) < 2:
        return 0.0
    # the diameter is the width along some direction; 64 directions miss it by ≤ 1 − cos(π/128)
    angles = np.linspace(0, np.pi, 64, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    proj = points @ directions.T
    return float((proj.max(0) - proj.min(0)).max())


def landscape(config: Config, target: Tensor) -> dict:
    """1 − CosSim, MSE(1, DotSim) and their sum on a grid: minima and the extent of their sublevel sets."""
    points, axis = grid(config.extent, config.landscape_size)
    spacing = float(axis[1] - axis[0])
    result = {}
    for name in ("cosine_loss", "mse_dot", "cosine_plus_mse_dot"):
        with torch.no_grad():
            values = L.LOSSES[name](points, target.expand_as(points), reduction="none")
        values = values.reshape(len(axis), len(axis)).numpy()
        low = values <= values.min() + config.sublevel_delta
        ii, jj = np.nonzero(low)
        low_points = np.stack([axis[jj], axis[ii]], axis=1)
        minima = strict_local_minima(values)
        minima_xy = np.stack([axis[minima[:, 1]], axis[minima[:, 0]]], axis=1)
        result[name] = {
            "values": values,
            "min": float(values.min()),
            "sublevel_diameter": diameter(low_points),
            "strict_local_minima": len(minima),
            "minima": minima_xy,
            "argmin_distance_to_y": float(
                np.linalg.norm(points[values.argmin()].numpy() - target.numpy())),
            "grid_spacing": spacing,
        }
    return result
