"""Experiment ``losses``: the gradient fields of the loss zoo.

We draw, for a target ``y ∈ ℝ²``, the gradient of each loss with
respect to ``x`` over the plane, test the claim that minimising ``log(loss)`` makes
descent overshoot the target instead of converging calmly, and check the stated
properties of the cosine and dot-product similarities.  This experiment draws
the fields (``∇_x`` for fixed ``y``; also ``∇_y`` for fixed ``x`` for
DotSim and GenSim), runs fixed-step gradient descent on MSE vs log MSE and
``1 − CosSim`` vs its log, and measures each property.  It also copies the
interactive page ``loss_field.html`` (the mouse moves ``y``) into ``out``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
import numpy as np
import torch
from torch import Tensor

from blackgrad import losses as L
from blackgrad.experiments import _common
from blackgrad.experiments._common import claim, save_figure, subplots, write_results

NAME = "losses"
TITLE = "The loss zoo: gradient fields, log-loss overshoot, similarity properties"
PAGE = "loss_field.html"

#: the plain / log pairs compared by gradient descent
DESCENT_PAIRS = {
    "mse": ("mse", "log_mse"),
    "cosine": ("cosine_loss", "log_cosine_loss"),
}


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


# ----------------------------------------------------------------------------- fields


def _grid(extent: float, size: int) -> tuple[Tensor, np.ndarray]:
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


#: colour range of log10|∇| shared by all field panels (one colour bar per figure)
FIELD_CLIM = (-2.0, 2.0)


def _draw_field(ax, points, grad, background, extent, marker, title, marker_label):
    """Heat map of the loss, unit arrows of the descent direction −∇ coloured by log10|∇|."""
    ax.imshow(background, origin="lower", extent=(-extent, extent, -extent, extent),
              cmap="Greys", alpha=0.55)
    norm = grad.norm(dim=1).numpy()
    moving = norm > 0
    if moving.any():
        descent = (-grad[moving] / grad[moving].norm(dim=1, keepdim=True)).numpy()
        pts = points[moving].numpy()
        spacing = float(points[1, 0] - points[0, 0])
        ax.quiver(pts[:, 0], pts[:, 1], descent[:, 0], descent[:, 1], np.log10(norm[moving]),
                  cmap="viridis", clim=FIELD_CLIM, pivot="mid", scale=1.3 / spacing,
                  scale_units="xy", width=0.005, headwidth=3.5, headlength=4, headaxislength=3.5)
    else:
        ax.text(0, 0, "∇ = 0 everywhere", ha="center", va="center", fontsize=10,
                bbox={"fc": "white", "ec": "0.5"})
    ax.plot(*marker, marker="*", color="crimson", markersize=14, label=marker_label)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xticks([])  # the extent is in the suptitle; tick labels only cost drawing time
    ax.set_yticks([])


def _field_colorbar(fig, axes) -> None:
    mappable = ScalarMappable(Normalize(*FIELD_CLIM), "viridis")
    fig.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01,
                 label=f"log10 |∇| (clipped to {FIELD_CLIM})")


def _background(loss, extent: float, size: int, other: Tensor, wrt: str) -> np.ndarray:
    """Loss values on a ``size × size`` image, with ``other`` (y or x) fixed."""
    points, _ = _grid(extent, size)
    with torch.no_grad():
        if wrt == "x":
            values = loss(points, other.expand_as(points), reduction="none")
        else:
            values = loss(other.expand_as(points), points, reduction="none")
    values = values.reshape(size, size).numpy()
    # clip to the 1–99 percentiles: a pole (|y| → 0 for DotSim) would flatten the shading
    low, high = np.percentile(values, [1, 99])
    return np.clip(values, low, high)


def _gen_sim_at(alpha: float) -> Callable[..., Tensor]:
    def loss(x, y, reduction="mean"):
        return L.gen_sim_loss(x, y, alpha=alpha, reduction=reduction)

    return loss


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


def _signed_errors(pair: str, paths: Tensor, target: Tensor) -> Tensor:
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


# ----------------------------------------------------------------------------- landscape


def _strict_local_minima(values: np.ndarray) -> np.ndarray:
    """Indices ``(i, j)`` of interior grid points strictly below their 8 neighbours."""
    centre = values[1:-1, 1:-1]
    is_min = np.ones_like(centre, dtype=bool)
    n, m = values.shape
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= centre < values[1 + di : n - 1 + di, 1 + dj : m - 1 + dj]
    return np.argwhere(is_min) + 1


def _diameter(points: np.ndarray) -> float:
    """Largest distance between two of ``points``: the widest of 64 projections (within 0.03 %)."""
    if len(points) < 2:
        return 0.0
    # the diameter is the width along some direction; 64 directions miss it by ≤ 1 − cos(π/128)
    angles = np.linspace(0, np.pi, 64, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    proj = points @ directions.T
    return float((proj.max(0) - proj.min(0)).max())


# ----------------------------------------------------------------------------- run


def run(config: Config, out: Path, progress: bool = True) -> dict:
    """Draw the fields, run the descents, measure the claims; write figures, page and results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float64
    target = torch.tensor(config.target, dtype=dtype)
    fixed_x = torch.tensor(config.fixed_x, dtype=dtype)
    points, _ = _grid(config.extent, config.grid_size)
    figures: list[str] = []

    def background(loss, other: Tensor, wrt: str) -> np.ndarray:
        return _background(loss, config.extent, config.background_size, other, wrt)

    claims: list[dict] = []
    result: dict = {"name": NAME, "title": TITLE, "config": asdict(config)}

    # --- ∇_x of every loss for the fixed target
    names = list(L.LOSSES)
    fig, axes = subplots(2, 5, figsize=(17, 7.2))
    field_norms = {}
    for ax, name in zip(axes.ravel(), _common.progress(names, progress, desc="∇_x fields")):
        loss = L.LOSSES[name]
        _, grad = loss_gradient(loss, points, target, wrt="x")
        field_norms[name] = grad.norm(dim=1)
        _draw_field(ax, points, grad, background(loss, target, "x"), config.extent, config.target,
                    name, "y")
    _field_colorbar(fig, axes)
    fig.suptitle(f"Descent direction −∇ₓ loss(x, y) on [−{config.extent:g}, {config.extent:g}]² "
                 "for the fixed target y (★); grey: loss value (darker = higher)")
    figures.append(save_figure(fig, out, "gradient_fields_x.png"))

    # --- DotSim / GenSim: ∇_x for fixed y and ∇_y for fixed x
    similarity_losses = {"mse_dot": L.mse_dot}
    similarity_losses.update({f"gen_sim_loss α={a:g}": _gen_sim_at(a) for a in config.alphas})
    fig, axes = subplots(2, len(similarity_losses), figsize=(3.6 * len(similarity_losses), 7.2))
    columns = _common.progress(similarity_losses.items(), progress, desc="∇_y fields")
    for col, (name, loss) in enumerate(columns):
        _, grad_x = loss_gradient(loss, points, target, wrt="x")
        _draw_field(axes[0, col], points, grad_x, background(loss, target, "x"), config.extent,
                    config.target, f"{name}: −∇ₓ, y fixed (★)", "y")
        _, grad_y = loss_gradient(loss, fixed_x, points, wrt="y")
        _draw_field(axes[1, col], points, grad_y, background(loss, fixed_x, "y"), config.extent,
                    config.fixed_x, f"{name}: −∇ᵧ, x fixed (★)", "x")
    _field_colorbar(fig, axes)
    fig.suptitle(f"DotSim and GenSim_α on [−{config.extent:g}, {config.extent:g}]²: top −∇ₓ for "
                 "fixed y, bottom −∇ᵧ for fixed x; grey: loss value")
    figures.append(save_figure(fig, out, "gradient_fields_y.png"))

    # --- plain vs log descent
    starts = torch.tensor(config.starts, dtype=dtype)
    steps = torch.tensor(config.step_sizes, dtype=dtype)
    descent: dict = {}
    paths_of: dict = {}
    for pair, (plain, logged) in DESCENT_PAIRS.items():
        descent[pair] = {}
        for name in (plain, logged):
            paths = descend(L.LOSSES[name], starts, target, steps, config.n_steps, progress, name)
            paths_of[name] = paths
            errors = _signed_errors(pair, paths, target).numpy()
            norms = paths.norm(dim=-1)
            rows = []
            for k, eta in enumerate(config.step_sizes):
                for s, start in enumerate(config.starts):
                    row = {"step_size": float(eta), "start": list(start),
                           **overshoot_metrics(errors[k, s])}
                    if pair == "cosine":  # the flow keeps |x|; fixed steps let it grow
                        row["norm_growth"] = float(norms[k, s, -1] / norms[k, s, 0] - 1)
                    rows.append(row)
            descent[pair][name] = rows
    result["descent"] = descent
    figures.append(_trajectory_figure(out, config, paths_of, target))
    for pair, (plain, logged) in DESCENT_PAIRS.items():
        claims.append(_overshoot_claim(pair, plain, logged, descent[pair], config))

    # --- MSE points straight at y
    _, grad_mse = loss_gradient(L.mse, points, target)
    away = points - target
    nonzero = away.norm(dim=1) > 0
    cross = grad_mse[:, 0] * away[:, 1] - grad_mse[:, 1] * away[:, 0]
    # atan2 keeps precision at tiny angles, where arccos of a cosine near 1 cannot
    angles = torch.atan2(cross.abs(), (grad_mse * away).sum(1))[nonzero]
    worst_angle = float(torch.rad2deg(angles).max())
    result["mse_worst_angle_deg"] = worst_angle
    claims.append(claim(
        "MSE is spherically symmetric around y: following its gradient moves x straight toward y "
        "from any direction",
        f"largest angle between −∇ₓMSE and y−x over {int(nonzero.sum())} grid points: {worst_angle:.1e}°",
        worst_angle < 1e-6,
    ))

    # --- cosine: invariance to |y|, explosion at 0, circular flow, anti-aligned
    cosine = _cosine_properties(config, points, target, descent["cosine"]["cosine_loss"])
    result["cosine"] = cosine
    claims.extend(cosine.pop("claims"))

    # --- DotSim: orthogonal part, ∇_y scaling
    dot = _dot_properties(config, fixed_x)
    result["dot_sim"] = dot
    claims.extend(dot.pop("claims"))
    figures.append(_cosine_figure(out, cosine, dot))

    # --- single minimum of 1 − CosSim + MSE(1, DotSim)
    landscape = _landscape(config, target)
    figures.append(_landscape_figure(out, config, landscape, target))
    result["single_minimum"] = {name: {k: v for k, v in info.items() if k != "values"}
                                for name, info in landscape.items()}
    claims.append(_single_minimum_claim(config, landscape))

    # --- the two sign losses as written
    result["sign_losses"], sign_claims = _sign_losses(points, target, field_norms)
    claims.extend(sign_claims)

    # --- the interactive page
    page = resources.files("blackgrad.experiments").joinpath(PAGE)
    with resources.as_file(page) as source:
        shutil.copyfile(source, out / PAGE)

    result.update({"figures": figures, "pages": [PAGE], "claims": claims})
    return write_results(out, result)


# ----------------------------------------------------------------------------- pieces of run


def _overshoot_claim(pair, plain, logged, runs, config) -> dict:
    def summary(name):
        rows = runs[name]
        changes = [r["sign_changes"] for r in rows]
        over = [r["max_overshoot"] for r in rows]
        increases = [r["increases"] for r in rows]
        return changes, over, increases, [r["final"] for r in rows]

    p_changes, p_over, p_inc, p_final = summary(plain)
    l_changes, l_over, l_inc, l_final = summary(logged)
    unit = "" if pair == "mse" else " rad"
    error = "distance to y" if pair == "mse" else "angle to y"
    n_runs = len(p_changes)
    holds = max(p_changes) == 0 and max(p_inc) == 0 and min(l_changes) >= 1
    seed = {
        "mse": "Minimising log(MSE) instead of MSE makes fixed-step descent overshoot the target "
               "instead of converging calmly",
        "cosine": "Minimising log(1 − CosSim) instead of 1 − CosSim makes descent overshoot the "
                  "alignment instead of converging calmly",
    }[pair]
    steps = ", ".join(f"{s:g}" for s in config.step_sizes)
    measured = (
        f"{n_runs} runs each (η ∈ {{{steps}}}, {len(config.starts)} starts, {config.n_steps} steps), "
        f"signed {error}: {plain}: {max(p_changes)} sign changes, max overshoot "
        f"{max(p_over):.2g}{unit}, |error| grew in {max(p_inc)} steps, final {min(p_final):.2g}–"
        f"{max(p_final):.2g}{unit}; {logged}: {min(l_changes)}–{max(l_changes)} sign changes, max "
        f"overshoot up to {max(l_over):.2g}{unit}, |error| grew in up to {max(l_inc)} steps, final "
        f"{min(l_final):.2g}–{max(l_final):.2g}{unit}"
    )
    return claim(seed, measured, holds)


def _cosine_properties(config: Config, points: Tensor, target: Tensor, cosine_runs) -> dict:
    dtype = target.dtype
    _, base = loss_gradient(L.cosine_loss, points, target)
    scale_dev = max(
        float((loss_gradient(L.cosine_loss, points, s * target)[1] - base).abs().max())
        for s in config.norm_scales
    ) / float(base.abs().max())
    claims = [claim(
        "The 1 − CosSim gradient field (w.r.t. x) is independent of |y|",
        f"|y| scaled by {list(config.norm_scales)}: largest change of ∇ₓ over the grid "
        f"{scale_dev:.1e} (relative to max |∇ₓ|)",
        scale_dev < 1e-10,
    )]

    # x at distance r from 0, perpendicular to y: |∇| = 1/r exactly (sin 90° = 1)
    perpendicular = torch.stack([-target[1], target[0]]) / target.norm()
    radii = torch.tensor(config.radii, dtype=dtype)
    _, grad_r = loss_gradient(L.cosine_loss, radii[:, None] * perpendicular, target)
    norms_r = grad_r.norm(dim=1).numpy()
    slope = float(np.polyfit(np.log(config.radii), np.log(norms_r), 1)[0])
    growth = float(norms_r[-1] / norms_r[0])
    claims.append(claim(
        "The 1 − CosSim gradient explodes when x gets close to 0",
        f"|∇ₓ| at |x| = {config.radii[0]:g} … {config.radii[-1]:g}: {norms_r[0]:.3g} … "
        f"{norms_r[-1]:.3g} (×{growth:.2g}); log-log slope {slope:.3f} (|∇| ∝ 1/|x|)",
        abs(slope + 1) < 0.05 and growth > 100,
    ))

    # gradient ⟂ x on the whole grid: the flow conserves |x| (circular trajectories)
    norm_x, norm_g = points.norm(dim=1), base.norm(dim=1)
    # on the line through y the gradient is 0 up to rounding noise of random direction
    valid = (norm_x > 0) & (norm_g > 1e-8 * norm_g.median())
    radial = float(((points * base).sum(1)[valid] / (norm_x * norm_g)[valid]).abs().max())
    growth = {eta: max(r["norm_growth"] for r in cosine_runs if r["step_size"] == eta)
              for eta in config.step_sizes}
    growth_text = ", ".join(f"{100 * g:.2g} % at η = {eta:g}" for eta, g in growth.items())
    claims.append(claim(
        "Following the 1 − CosSim gradient gives circular trajectories: the norm of x is kept",
        f"max |cos∠(∇ₓ, x)| over the grid {radial:.1e}, so the gradient flow keeps |x|; "
        f"fixed-step descent ({config.n_steps} steps) grows |x| by up to {growth_text} "
        "(each step is orthogonal to x, so |x|² gains the squared step)",
        radial < 1e-10,
    ))

    # x anti-aligned with y: gradient sinθ/|x| vanishes at θ = π
    angle_y = torch.atan2(target[1], target[0])
    thetas = torch.tensor([math.pi / 2, math.pi - 0.1, math.pi - 0.01, math.pi], dtype=dtype)
    xs = torch.stack([torch.cos(angle_y + thetas), torch.sin(angle_y + thetas)], dim=1)
    _, grad_t = loss_gradient(L.cosine_loss, xs, target)
    norms_t = grad_t.norm(dim=1).numpy()
    claims.append(claim(
        "When x is aligned with y in the wrong direction, the 1 − CosSim gradient is negligible",
        f"|x| = 1, |∇ₓ| at angle π/2: {norms_t[0]:.3g}, π−0.1: {norms_t[1]:.3g}, π−0.01: "
        f"{norms_t[2]:.3g}, π: {norms_t[3]:.1e}",
        norms_t[3] < 1e-12 and norms_t[2] < 0.02 * norms_t[0],
    ))

    # the curve for the figure: |∇| vs |x| for plain and log cosine at 60° from y
    curve_r = np.logspace(-3, 1, 41)
    at_60 = torch.stack([torch.cos(angle_y + math.pi / 3), torch.sin(angle_y + math.pi / 3)])
    xs_r = torch.tensor(curve_r, dtype=dtype)[:, None] * at_60
    return {
        "scale_invariance_deviation": scale_dev,
        "explosion": {"radii": list(config.radii), "grad_norms": norms_r, "slope": slope},
        "max_radial_cosine": radial,
        "anti_aligned": {"angles": thetas.numpy(), "grad_norms": norms_t},
        "curve": {
            "radius": curve_r,
            "cosine_loss": loss_gradient(L.cosine_loss, xs_r, target)[1].norm(dim=1).numpy(),
            "log_cosine_loss": loss_gradient(L.log_cosine_loss, xs_r, target)[1].norm(dim=1).numpy(),
        },
        "claims": claims,
    }


def _dot_properties(config: Config, fixed_x: Tensor) -> dict:
    dtype = fixed_x.dtype
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.orthogonal_samples, config.orthogonal_dim)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    y = torch.randn(shape, generator=generator, dtype=dtype)
    noise = 3 * torch.randn(shape, generator=generator, dtype=dtype)
    orthogonal = noise - (noise * y).sum(-1, keepdim=True) / (y * y).sum(-1, keepdim=True) * y
    change = float((L.dot_sim(x + orthogonal, y) - L.dot_sim(x, y)).abs().max())
    _, grad = loss_gradient(L.mse_dot, x, y)
    unit_y = y / y.norm(dim=-1, keepdim=True)
    off_axis = grad - (grad * unit_y).sum(-1, keepdim=True) * unit_y
    off_ratio = float((off_axis.norm(dim=-1) / grad.norm(dim=-1)).max())
    claims = [claim(
        "The orthogonal part of x with respect to y has no contribution to DotSim "
        "(nor to MSE(1, DotSim))",
        f"{config.orthogonal_samples} random pairs in ℝ^{config.orthogonal_dim}: adding a random "
        f"orthogonal part changed DotSim by at most {change:.1e}; ∇ₓMSE(1, DotSim) has at most "
        f"{off_ratio:.1e} of its norm off the y axis",
        change < 1e-12 and off_ratio < 1e-12,
    )]

    # ∇_y of MSE(1, DotSim) as |y| varies along a direction 60° from x
    angle = torch.atan2(fixed_x[1], fixed_x[0]) + math.pi / 3
    direction = torch.stack([torch.cos(angle), torch.sin(angle)])
    scales = np.asarray(config.y_scales)
    ys = torch.tensor(scales, dtype=dtype)[:, None] * direction
    _, grad_y = loss_gradient(L.mse_dot, fixed_x, ys, wrt="y")
    norms = grad_y.norm(dim=1).numpy()
    at_one = float(np.interp(0.0, np.log(scales), np.log(norms)))
    small, large = float(np.log(norms[0]) - at_one), float(np.log(norms[-1]) - at_one)
    claims.append(claim(
        "The MSE(1, DotSim) gradient w.r.t. y explodes when |y| → 0 and reduces to 0 when |y| → ∞",
        f"|∇ᵧ| relative to |y| = 1: ×{math.exp(small):.2g} at |y| = {scales[0]:g}, "
        f"×{math.exp(large):.2g} at |y| = {scales[-1]:g}",
        small > math.log(1e3) and large < math.log(1e-3),
    ))
    return {
        "orthogonal_change": change,
        "gradient_off_axis": off_ratio,
        "grad_y_vs_norm": {"norm_y": scales, "grad_norm": norms},
        "claims": claims,
    }


def _landscape(config: Config, target: Tensor) -> dict:
    points, axis = _grid(config.extent, config.landscape_size)
    spacing = float(axis[1] - axis[0])
    landscape = {}
    for name in ("cosine_loss", "mse_dot", "cosine_plus_mse_dot"):
        with torch.no_grad():
            values = L.LOSSES[name](points, target.expand_as(points), reduction="none")
        values = values.reshape(len(axis), len(axis)).numpy()
        low = values <= values.min() + config.sublevel_delta
        ii, jj = np.nonzero(low)
        low_points = np.stack([axis[jj], axis[ii]], axis=1)
        minima = _strict_local_minima(values)
        minima_xy = np.stack([axis[minima[:, 1]], axis[minima[:, 0]]], axis=1)
        landscape[name] = {
            "values": values,
            "min": float(values.min()),
            "sublevel_diameter": _diameter(low_points),
            "strict_local_minima": len(minima),
            "minima": minima_xy,
            "argmin_distance_to_y": float(
                np.linalg.norm(points[values.argmin()].numpy() - target.numpy())),
            "grid_spacing": spacing,
        }
    return landscape


def _single_minimum_claim(config: Config, landscape: dict) -> dict:
    cos, dot, both = (landscape[n] for n in ("cosine_loss", "mse_dot", "cosine_plus_mse_dot"))
    holds = (
        both["strict_local_minima"] == 1
        and both["argmin_distance_to_y"] <= both["grid_spacing"]
        and both["sublevel_diameter"] < 0.25 * min(cos["sublevel_diameter"], dot["sublevel_diameter"])
    )
    n = config.landscape_size
    return claim(
        "1 − CosSim is minimal on all x aligned with y, MSE(1, DotSim) on the whole orthogonal "
        "line through y; their sum has a single minimum at x = y",
        f"on a {n}×{n} grid of [−{config.extent:g}, {config.extent:g}]²: extent of {{loss ≤ min + "
        f"{config.sublevel_delta:g}}}: 1 − CosSim {cos['sublevel_diameter']:.2f}, MSE(1, DotSim) "
        f"{dot['sublevel_diameter']:.2f}, sum {both['sublevel_diameter']:.2f}; strict local minima: "
        f"{cos['strict_local_minima']}, {dot['strict_local_minima']}, "
        f"{both['strict_local_minima']} (sum's at distance {both['argmin_distance_to_y']:.2g} from y)",
        holds,
    )


def _sign_losses(points, target, field_norms) -> tuple[dict, list[dict]]:
    d = target.numel()
    hinge_at_y = float(L.sign_hinge_loss(target, target))
    hinge_at_minus_y = float(L.sign_hinge_loss(-target, target))
    hinge_zero = int((field_norms["sign_hinge_loss"] == 0).sum())
    with torch.no_grad():
        relu_values = L.relu_sign_loss(points, target.expand_as(points), reduction="none")
    same_orthant = (torch.sign(points) == torch.sign(target)).all(dim=1)
    relu_zero_inside = bool((relu_values[same_orthant] == 0).all())
    relu_positive_outside = bool((relu_values[~same_orthant & (points != 0).all(dim=1)] > 0).all())
    _, relu_grad = loss_gradient(L.relu_sign_loss, points, target)
    disagree = (points * target < 0)
    relu_grad_ok = bool(torch.equal(relu_grad, torch.where(disagree, -target.expand_as(points),
                                                           torch.zeros_like(points))))
    n = len(points)
    claims = [
        claim(
            "The sign-hinge loss as first written, −∑_d max(0, 1 − sgn(y_d⋅x_d)) drives x toward the signs of y",
            f"as written: loss(y, y) = {hinge_at_y:g} but loss(−y, y) = {hinge_at_minus_y:g} "
            f"(lower, d = {d}), and its autograd gradient is 0 at {hinge_zero}/{n} grid points: it "
            "rewards opposite signs and gives no gradient (the leading minus looks like a slip)",
            hinge_at_y < hinge_at_minus_y and hinge_zero < n,
        ),
        claim(
            "The sign loss ∑_d ReLU(−y_d⋅x_d) drives x into the orthant of y",
            f"0 on all grid points in y's orthant: {relu_zero_inside}; > 0 elsewhere: "
            f"{relu_positive_outside}; ∇ₓ = −y_d exactly on the disagreeing coordinates: {relu_grad_ok}",
            relu_zero_inside and relu_positive_outside and relu_grad_ok,
        ),
    ]
    info = {"hinge_at_y": hinge_at_y, "hinge_at_minus_y": hinge_at_minus_y,
            "hinge_zero_gradient_points": hinge_zero, "grid_points": n}
    return info, claims


# ----------------------------------------------------------------------------- figures


SIGNED_TICKS = (-100.0, -1.0, -0.01, 0.0, 0.01, 1.0, 100.0)


def _trajectory_figure(out, config, paths_of, target) -> str:
    shown = int(np.argmin(config.step_sizes))  # larger steps make the log paths leave the plot
    eta = config.step_sizes[shown]
    fig, axes = subplots(2, 3, figsize=(14, 8.6))
    fig.subplots_adjust(wspace=0.3, hspace=0.25)  # (constrained layout costs ~0.3 s a figure)
    for row, (pair, (plain, logged)) in enumerate(DESCENT_PAIRS.items()):
        ax_path, ax_err, ax_sweep = axes[row]
        shading = _background(L.LOSSES[plain], config.extent, config.background_size, target, "x")
        extent = config.extent
        ax_path.imshow(shading, origin="lower", extent=(-extent, extent, -extent, extent),
                       cmap="Greys", alpha=0.45)
        for name, style in ((plain, "-"), (logged, "--")):
            paths = paths_of[name][shown].numpy()
            for s, path in enumerate(paths):
                ax_path.plot(path[:, 0], path[:, 1], style, marker="." if style == "-" else "x",
                             markersize=4, lw=1, color=f"C{s}", label=name if s == 0 else None)
            errors = _signed_errors(pair, paths_of[name], target)[shown].numpy()
            for s, err in enumerate(errors):
                ax_err.plot(err, style, color=f"C{s}", lw=1, label=name if s == 0 else None)
            sweep = [np.mean([overshoot_metrics(e)["max_overshoot"]
                              for e in _signed_errors(pair, paths_of[name], target)[k].numpy()])
                     for k in range(len(config.step_sizes))]
            ax_sweep.plot(config.step_sizes, sweep, style, marker="o", color="k", label=name)
        ax_path.plot(*config.target, marker="*", color="crimson", markersize=14)
        ax_path.set_xlim(-extent, extent)
        ax_path.set_ylim(-extent, extent)
        ax_path.set_aspect("equal")
        ax_path.legend(fontsize=8)
        ax_path.set_title(f"paths at η = {eta:g} (solid: plain, dashed: log)", fontsize=9)
        ax_err.axhline(0, color="0.5", lw=0.8)
        ax_err.set_yscale("symlog", linthresh=1e-3)
        # a few plain tick labels: the default ±10^k labels cost seconds of mathtext layout
        ax_err.set_yticks(SIGNED_TICKS, [f"{t:g}" for t in SIGNED_TICKS])
        ax_err.yaxis.set_minor_locator(ticker.NullLocator())
        ax_err.set_xlabel("step")
        ax_err.set_ylabel("signed distance to y" if pair == "mse" else "signed angle to y (rad)")
        ax_err.set_title(f"signed error at η = {eta:g}; crossing 0 = overshooting", fontsize=9)
        ax_err.legend(fontsize=8)
        ax_sweep.set_xscale("log")
        ax_sweep.set_xticks(config.step_sizes, [f"{s:g}" for s in config.step_sizes])
        ax_sweep.xaxis.set_minor_locator(ticker.NullLocator())
        ax_sweep.set_xlabel("step size η")
        ax_sweep.set_ylabel("mean max overshoot past the target")
        ax_sweep.set_title("overshoot vs step size", fontsize=9)
        ax_sweep.legend(fontsize=8)
    fig.suptitle("Fixed-step gradient descent: plain loss vs its log")
    return save_figure(fig, out, "descent_overshoot.png")


def _landscape_figure(out, config, landscape, target) -> str:
    fig, axes = subplots(1, 3, figsize=(13, 4.4))
    fig.subplots_adjust(wspace=0.3, top=0.8)
    extent = config.extent
    titles = {"cosine_loss": "1 − CosSim", "mse_dot": "MSE(1, DotSim)",
              "cosine_plus_mse_dot": "1 − CosSim + MSE(1, DotSim)"}
    for ax, (name, info) in zip(axes, landscape.items()):
        values = info["values"]
        image = ax.imshow(np.log10(values - values.min() + 1e-4), origin="lower", cmap="magma",
                          extent=(-extent, extent, -extent, extent), vmin=-4, vmax=1)
        axis = np.linspace(-extent, extent, values.shape[0])
        ax.contour(axis, axis, values, levels=[values.min() + config.sublevel_delta], colors="cyan",
                   linewidths=1.2)
        if len(info["minima"]):
            ax.plot(info["minima"][:, 0], info["minima"][:, 1], "c.", markersize=3)
        ax.plot(*target.numpy(), marker="*", color="lime", markersize=12)
        count = info["strict_local_minima"]
        ax.set_title(f"{titles[name]}\n{count} strict local minim{'um' if count == 1 else 'a'}",
                     fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="log10(loss − min + 1e-4)")
    fig.suptitle(f"Minima (dots) and the set loss ≤ min + {config.sublevel_delta:g} (cyan); ★ = y")
    return save_figure(fig, out, "single_minimum.png")


def _plain_log_labels(ax) -> None:
    """Decade labels as plain text ("1e-05"): the default mathtext labels are slow to lay out."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(ticker.LogFormatter())
            axis.set_minor_locator(ticker.NullLocator())


def _cosine_figure(out, cosine, dot) -> str:
    fig, axes = subplots(1, 3, figsize=(13, 3.8))
    fig.subplots_adjust(wspace=0.3)
    curve = cosine["curve"]
    axes[0].loglog(curve["radius"], curve["cosine_loss"], label="1 − CosSim")
    axes[0].loglog(curve["radius"], curve["log_cosine_loss"], "--", label="log(1 − CosSim)")
    axes[0].loglog(curve["radius"], np.sin(np.pi / 3) / curve["radius"], ":", color="k",
                   label="sin 60° / |x|")
    axes[0].set_xlabel("|x| (x at 60° from y)")
    axes[0].set_ylabel("|∇ₓ|")
    axes[0].set_title("CosSim gradient explodes as x → 0", fontsize=9)
    axes[0].legend(fontsize=8)
    angles = np.linspace(0, np.pi, 181)
    axes[1].plot(angles, np.sin(angles), label="sin θ / |x| (|x| = 1)")
    anti = cosine["anti_aligned"]
    axes[1].plot(anti["angles"], anti["grad_norms"], "o", label="measured |∇ₓ|")
    axes[1].set_xlabel("angle θ between x and y")
    axes[1].set_title("negligible gradient when x points away from y", fontsize=9)
    axes[1].legend(fontsize=8)
    grad_y = dot["grad_y_vs_norm"]
    axes[2].loglog(grad_y["norm_y"], grad_y["grad_norm"], "o-")
    axes[2].set_xlabel("|y| (x fixed)")
    axes[2].set_ylabel("|∇ᵧ MSE(1, DotSim)|")
    axes[2].set_title("DotSim: ∇ᵧ explodes as |y| → 0, vanishes as |y| → ∞", fontsize=9)
    for ax in axes:
        _plain_log_labels(ax)
    return save_figure(fig, out, "similarity_properties.png")
