"""The figures of the ``losses`` experiment: gradient fields, descents, landscapes, similarity properties.

Each function draws from what :mod:`.fields` and :mod:`.claims` computed,
saves one PNG into ``out`` and returns its file name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from torch import Tensor

from blackgrad import losses as L
from blackgrad.experiments._common import save_figure, subplots

from .fields import DESCENT_PAIRS, background, overshoot_metrics, signed_errors, similarity_losses

if TYPE_CHECKING:
    from . import Config


#: colour range of log10|∇| shared by all field panels (one colour bar per figure)
FIELD_CLIM = (-2.0, 2.0)


def _draw_field(ax, points, grad, shading, extent, marker, title, marker_label):
    """Heat map of the loss, unit arrows of the descent direction −∇ coloured by log10|∇|."""
    ax.imshow(shading, origin="lower", extent=(-extent, extent, -extent, extent),
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


def x_fields_figure(out, config: Config, points: Tensor, target: Tensor, fields: dict[str, Tensor]) -> str:
    """``−∇ₓ`` of every loss for the fixed target, over its loss heat map."""
    fig, axes = subplots(2, 5, figsize=(17, 7.2))
    for ax, (name, grad) in zip(axes.ravel(), fields.items()):
        loss = L.LOSSES[name]
        shading = background(loss, config.extent, config.background_size, target, "x")
        _draw_field(ax, points, grad, shading, config.extent, config.target, name, "y")
    _field_colorbar(fig, axes)
    fig.suptitle(f"Descent direction −∇ₓ loss(x, y) on [−{config.extent:g}, {config.extent:g}]² "
                 "for the fixed target y (★); grey: loss value (darker = higher)")
    return save_figure(fig, out, "gradient_fields_x.png")


def similarity_fields_figure(out, config: Config, points: Tensor, target: Tensor, fixed_x: Tensor,
                             fields: dict[str, tuple[Tensor, Tensor]]) -> str:
    """DotSim and GenSim: ``−∇ₓ`` for the fixed y (top row), ``−∇ᵧ`` for the fixed x (bottom row)."""
    losses = similarity_losses(config)
    fig, axes = subplots(2, len(fields), figsize=(3.6 * len(fields), 7.2))
    for col, (name, (grad_x, grad_y)) in enumerate(fields.items()):
        loss = losses[name]
        _draw_field(axes[0, col], points, grad_x, background(loss, config.extent, config.background_size, target, "x"),
                   config.extent, config.target, f"{name}: −∇ₓ, y fixed (★)", "y")
        _draw_field(axes[1, col], points, grad_y, background(loss, config.extent, config.background_size, fixed_x, "y"),
                   config.extent, config.fixed_x, f"{name}: −∇ᵧ, x fixed (★)", "x")
    _field_colorbar(fig, axes)
    fig.suptitle(f"DotSim and GenSim_α on [−{config.extent:g}, {config.extent:g}]²: top −∇ₓ for "
                 "fixed y, bottom −∇ᵧ for fixed x; grey: loss value")
    return save_figure(fig, out, "gradient_fields_y.png")


SIGNED_TICKS = (-100.0, -1.0, -0.01, 0.0, 0.01, 1.0, 100.0)


def trajectory_figure(out, config, paths_of, target) -> str:
    """Plain vs log descent: paths, signed errors and overshoot against the step size, one row per pair."""
    shown = int(np.argmin(config.step_sizes))  # larger steps make the log paths leave the plot
    eta = config.step_sizes[shown]
    fig, axes = subplots(2, 3, figsize=(14, 8.6))
    fig.subplots_adjust(wspace=0.3, hspace=0.25)  # (constrained layout costs ~0.3 s a figure)
    for row, (pair, (plain, logged)) in enumerate(DESCENT_PAIRS.items()):
        ax_path, ax_err, ax_sweep = axes[row]
        shading = background(L.LOSSES[plain], config.extent, config.background_size, target, "x")
        extent = config.extent
        ax_path.imshow(shading, origin="lower", extent=(-extent, extent, -extent, extent),
                       cmap="Greys", alpha=0.45)
        for name, style in ((plain, "-"), (logged, "--")):
            paths = paths_of[name][shown].numpy()
            for s, path in enumerate(paths):
                ax_path.plot(path[:, 0], path[:, 1], style, marker="." if style == "-" else "x",
                             markersize=4, lw=1, color=f"C{s}", label=name if s == 0 else None)
            errors = signed_errors(pair, paths_of[name], target)[shown].numpy()
            for s, err in enumerate(errors):
                ax_err.plot(err, style, color=f"C{s}", lw=1, label=name if s == 0 else None)
            sweep = [np.mean([overshoot_metrics(e)["max_overshoot"]
                              for e in signed_errors(pair, paths_of[name], target)[k].numpy()])
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


def landscape_figure(out, config, landscape, target) -> str:
    """The three similarity landscapes: minima and the sublevel set near the minimum."""
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


def cosine_figure(out, cosine, dot) -> str:
    """CosSim's explosion at 0 and silence when anti-aligned; DotSim's ``∇ᵧ`` against ``|y|``."""
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
