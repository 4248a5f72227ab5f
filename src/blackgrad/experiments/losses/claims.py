"""The claims the ``losses`` experiment tests, each measured on the grids of :mod:`.fields`.

Every function returns what it measured (for ``results.json`` and the
figures) with the claim rows built from it (see :func:`~blackgrad.experiments._common.claim`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from blackgrad import losses as L
from blackgrad.experiments._common import claim

from .fields import loss_gradient

if TYPE_CHECKING:
    from . import Config


# ----------------------------------------------------------------------------- descent


def overshoot_claim(pair, plain, logged, runs, config) -> dict:
    """Log losses overshoot where the plain ones converge calmly (from :func:`.fields.descents`)."""

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
    statement = {
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
    return claim(statement, measured, holds)


# ----------------------------------------------------------------------------- MSE


def mse_points_at_target(points: Tensor, target: Tensor) -> tuple[float, dict]:
    """The largest angle between ``−∇ₓMSE`` and ``y − x`` over the grid, and its claim."""
    _, grad_mse = loss_gradient(L.mse, points, target)
    away = points - target
    nonzero = away.norm(dim=1) > 0
    cross = grad_mse[:, 0] * away[:, 1] - grad_mse[:, 1] * away[:, 0]
    # atan2 keeps precision at tiny angles, where arccos of a cosine near 1 cannot
    angles = torch.atan2(cross.abs(), (grad_mse * away).sum(1))[nonzero]
    worst_angle = float(torch.rad2deg(angles).max())
    return worst_angle, claim(
        "MSE is spherically symmetric around y: following its gradient moves x straight toward y "
        "from any direction",
        f"largest angle between −∇ₓMSE and y−x over {int(nonzero.sum())} grid points: {worst_angle:.1e}°",
        worst_angle < 1e-6,
    )


# ----------------------------------------------------------------------------- cosine


def cosine_properties(config: Config, points: Tensor, target: Tensor, cosine_runs) -> dict:
    """Invariance to ``|y|``, explosion at 0, circular flow, nothing when anti-aligned; the figure's curve."""
    _, base = loss_gradient(L.cosine_loss, points, target)
    scale_dev, scale_claim = _cosine_scale_invariance(config, points, target, base)
    explosion, explosion_claim = _cosine_explosion(config, target)
    radial, circular_claim = _cosine_circular_flow(config, points, base, cosine_runs)
    anti_aligned, anti_claim = _cosine_anti_aligned(target)
    return {
        "scale_invariance_deviation": scale_dev,
        "explosion": explosion,
        "max_radial_cosine": radial,
        "anti_aligned": anti_aligned,
        "curve": _cosine_curve(target),
        "claims": [scale_claim, explosion_claim, circular_claim, anti_claim],
    }


def _cosine_scale_invariance(config: Config, points: Tensor, target: Tensor, base: Tensor) -> tuple[float, dict]:
    scale_dev = max(
        float((loss_gradient(L.cosine_loss, points, s * target)[1] - base).abs().max())
        for s in config.norm_scales
    ) / float(base.abs().max())
    return scale_dev, claim(
        "The 1 − CosSim gradient field (w.r.t. x) is independent of |y|",
        f"|y| scaled by {list(config.norm_scales)}: largest change of ∇ₓ over the grid "
        f"{scale_dev:.1e} (relative to max |∇ₓ|)",
        scale_dev < 1e-10,
    )


def _cosine_explosion(config: Config, target: Tensor) -> tuple[dict, dict]:
    # x at distance r from 0, perpendicular to y: |∇| = 1/r exactly (sin 90° = 1)
    perpendicular = torch.stack([-target[1], target[0]]) / target.norm()
    radii = torch.tensor(config.radii, dtype=target.dtype)
    _, grad_r = loss_gradient(L.cosine_loss, radii[:, None] * perpendicular, target)
    norms_r = grad_r.norm(dim=1).numpy()
    slope = float(np.polyfit(np.log(config.radii), np.log(norms_r), 1)[0])
    growth = float(norms_r[-1] / norms_r[0])
    measured = {"radii": list(config.radii), "grad_norms": norms_r, "slope": slope}
    return measured, claim(
        "The 1 − CosSim gradient explodes when x gets close to 0",
        f"|∇ₓ| at |x| = {config.radii[0]:g} … {config.radii[-1]:g}: {norms_r[0]:.3g} … "
        f"{norms_r[-1]:.3g} (×{growth:.2g}); log-log slope {slope:.3f} (|∇| ∝ 1/|x|)",
        abs(slope + 1) < 0.05 and growth > 100,
    )


def _cosine_circular_flow(config: Config, points: Tensor, base: Tensor, cosine_runs) -> tuple[float, dict]:
    # gradient ⟂ x on the whole grid: the flow conserves |x| (circular trajectories)
    norm_x, norm_g = points.norm(dim=1), base.norm(dim=1)
    # on the line through y the gradient is 0 up to rounding noise of random direction
    valid = (norm_x > 0) & (norm_g > 1e-8 * norm_g.median())
    radial = float(((points * base).sum(1)[valid] / (norm_x * norm_g)[valid]).abs().max())
    growth = {eta: max(r["norm_growth"] for r in cosine_runs if r["step_size"] == eta)
              for eta in config.step_sizes}
    growth_text = ", ".join(f"{100 * g:.2g} % at η = {eta:g}" for eta, g in growth.items())
    return radial, claim(
        "Following the 1 − CosSim gradient gives circular trajectories: the norm of x is kept",
        f"max |cos∠(∇ₓ, x)| over the grid {radial:.1e}, so the gradient flow keeps |x|; "
        f"fixed-step descent ({config.n_steps} steps) grows |x| by up to {growth_text} "
        "(each step is orthogonal to x, so |x|² gains the squared step)",
        radial < 1e-10,
    )


def _cosine_anti_aligned(target: Tensor) -> tuple[dict, dict]:
    # x anti-aligned with y: gradient sinθ/|x| vanishes at θ = π
    angle_y = torch.atan2(target[1], target[0])
    thetas = torch.tensor([math.pi / 2, math.pi - 0.1, math.pi - 0.01, math.pi], dtype=target.dtype)
    xs = torch.stack([torch.cos(angle_y + thetas), torch.sin(angle_y + thetas)], dim=1)
    _, grad_t = loss_gradient(L.cosine_loss, xs, target)
    norms_t = grad_t.norm(dim=1).numpy()
    return {"angles": thetas.numpy(), "grad_norms": norms_t}, claim(
        "When x is aligned with y in the wrong direction, the 1 − CosSim gradient is negligible",
        f"|x| = 1, |∇ₓ| at angle π/2: {norms_t[0]:.3g}, π−0.1: {norms_t[1]:.3g}, π−0.01: "
        f"{norms_t[2]:.3g}, π: {norms_t[3]:.1e}",
        norms_t[3] < 1e-12 and norms_t[2] < 0.02 * norms_t[0],
    )


def _cosine_curve(target: Tensor) -> dict:
    """``|∇|`` vs ``|x|`` for plain and log cosine at 60° from ``y`` (the figure's curve)."""
    angle_y = torch.atan2(target[1], target[0])
    curve_r = np.logspace(-3, 1, 41)
    at_60 = torch.stack([torch.cos(angle_y + math.pi / 3), torch.sin(angle_y + math.pi / 3)])
    xs_r = torch.tensor(curve_r, dtype=target.dtype)[:, None] * at_60
    return {
        "radius": curve_r,
        "cosine_loss": loss_gradient(L.cosine_loss, xs_r, target)[1].norm(dim=1).numpy(),
        "log_cosine_loss": loss_gradient(L.log_cosine_loss, xs_r, target)[1].norm(dim=1).numpy(),
    }


# ----------------------------------------------------------------------------- DotSim


def dot_properties(config: Config, fixed_x: Tensor) -> dict:
    """DotSim ignores the part of x orthogonal to y; ``∇_y MSE(1, DotSim)`` explodes and vanishes with ``|y|``."""
    change, off_ratio, orthogonal_claim = _dot_orthogonal_part(config, fixed_x.dtype)
    scaling, scaling_claim = _dot_grad_y_scaling(config, fixed_x)
    return {
        "orthogonal_change": change,
        "gradient_off_axis": off_ratio,
        "grad_y_vs_norm": scaling,
        "claims": [orthogonal_claim, scaling_claim],
    }


def _dot_orthogonal_part(config: Config, dtype: torch.dtype) -> tuple[float, float, dict]:
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
    return change, off_ratio, claim(
        "The orthogonal part of x with respect to y has no contribution to DotSim "
        "(nor to MSE(1, DotSim))",
        f"{config.orthogonal_samples} random pairs in ℝ^{config.orthogonal_dim}: adding a random "
        f"orthogonal part changed DotSim by at most {change:.1e}; ∇ₓMSE(1, DotSim) has at most "
        f"{off_ratio:.1e} of its norm off the y axis",
        change < 1e-12 and off_ratio < 1e-12,
    )


def _dot_grad_y_scaling(config: Config, fixed_x: Tensor) -> tuple[dict, dict]:
    # ∇_y of MSE(1, DotSim) as |y| varies along a direction 60° from x
    angle = torch.atan2(fixed_x[1], fixed_x[0]) + math.pi / 3
    direction = torch.stack([torch.cos(angle), torch.sin(angle)])
    scales = np.asarray(config.y_scales)
    ys = torch.tensor(scales, dtype=fixed_x.dtype)[:, None] * direction
    _, grad_y = loss_gradient(L.mse_dot, fixed_x, ys, wrt="y")
    norms = grad_y.norm(dim=1).numpy()
    at_one = float(np.interp(0.0, np.log(scales), np.log(norms)))
    small, large = float(np.log(norms[0]) - at_one), float(np.log(norms[-1]) - at_one)
    return {"norm_y": scales, "grad_norm": norms}, claim(
        "The MSE(1, DotSim) gradient w.r.t. y explodes when |y| → 0 and reduces to 0 when |y| → ∞",
        f"|∇ᵧ| relative to |y| = 1: ×{math.exp(small):.2g} at |y| = {scales[0]:g}, "
        f"×{math.exp(large):.2g} at |y| = {scales[-1]:g}",
        small > math.log(1e3) and large < math.log(1e-3),
    )


# ----------------------------------------------------------------------------- landscape and signs


def single_minimum_claim(config: Config, landscape: dict) -> dict:
    """1 − CosSim + MSE(1, DotSim) has one minimum, at y (from :func:`.fields.landscape`)."""
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


def sign_losses(points, target, field_norms) -> tuple[dict, list[dict]]:
    """The two sign losses as written: what they reward, and the gradient they give."""
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
