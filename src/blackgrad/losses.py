"""A loss zoo: distances and similarities between a prediction and a target.

Every function takes tensors ``x`` (the value being optimised) and ``y`` (the
target) of shape ``(..., d)``: the scalar product ``⟨x|y⟩ = ∑_d x_d y_d`` is
taken along the last dimension, giving one value per sample, and
``reduction="mean"`` (the default) averages these over all leading (batch)
dimensions; ``reduction="none"`` returns the per-sample values of shape
``(...)``.  ``x`` and ``y`` broadcast against each other.

Note that, as first defined for this zoo, ``MSE(x, y) = mean(⟨x−y|x−y⟩)`` sums the squares
over the vector dimension; :func:`torch.nn.functional.mse_loss` would also
average over it (a factor ``d`` smaller).

Division guards: norms are smoothed as ``|v|_ε = sqrt(⟨v|v⟩ + ε²)`` (and
``⟨y|y⟩`` as ``⟨y|y⟩ + ε²``) with ``ε = eps = 1e-12`` by default, so the
similarities are finite and differentiable at ``0`` (where they are ``0``)
and exact to rounding as soon as ``|v| ≫ ε``.  The log losses take
``log(loss + eps)`` so that a perfect fit gives ``log(eps)`` instead of ``−∞``.

``LOSSES`` maps a name to each loss with its default parameters; the
experiment ``losses`` and its interactive page ``loss_field.html`` use the same
names.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "EPS",
    "LOSSES",
    "mse",
    "log_mse",
    "cos_sim",
    "cosine_loss",
    "log_cosine_loss",
    "dot_sim",
    "mse_dot",
    "gen_sim",
    "gen_sim_loss",
    "cosine_plus_mse",
    "cosine_plus_mse_dot",
    "sign_hinge_loss",
    "relu_sign_loss",
]

#: default guard added where a norm divides or a log is taken
EPS = 1e-12

_REDUCTIONS = ("mean", "none")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _dot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(-1)


def _smooth_norm(v: Tensor, eps: float) -> Tensor:
    # sqrt(|v|² + ε²) rather than clamp(|v|, ε): smooth everywhere, so gradcheck
    # and the gradient fields see no kink near 0.
    return torch.sqrt(_dot(v, v) + eps * eps)


def mse(x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error ``MSE(x, y) = mean_batch ⟨x−y|x−y⟩``.

    A spherically symmetric bowl around ``y``: ``∇_x = 2(x−y)`` points straight
    away from the target whatever the direction, with a length proportional to
    the distance.
    """
    diff = x - y
    return _reduce(_dot(diff, diff), reduction)


def _log_of(loss: Tensor, eps: float) -> Tensor:
    # log of the already reduced loss: with reduction="mean" this is log of the
    # batch loss (what one would minimise instead of the loss), with "none"
    # every sample is its own batch.
    return torch.log(loss + eps)


def log_mse(x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean") -> Tensor:
    """``log(MSE(x, y) + eps)``: "minimise log(loss) instead", for MSE.

    ``∇_x = 2(x−y)/(|x−y|² + eps)``: the same directions as MSE but a length
    ``≈ 2/|x−y|`` that *grows* as ``x`` approaches ``y``, so a fixed-step descent
    overshoots the target.  With ``reduction="mean"`` the log is taken of the
    batch mean (so the mean of the ``"none"`` output differs from it).
    """
    return _log_of(mse(x, y, reduction), eps)


def cos_sim(x: Tensor, y: Tensor, eps: float = EPS) -> Tensor:
    """Cosine similarity ``CosSim(x, y) = ⟨x|y⟩ / (|x|_ε |y|_ε)``, per sample (no reduction).

    The cosine of the angle between ``x`` and ``y``; lengths are disregarded, so
    it is invariant to scaling either argument by a positive factor.  Returns
    shape ``(...)``; ``0`` when either vector is ``0``.
    """
    return _dot(x, y) / (_smooth_norm(x, eps) * _smooth_norm(y, eps))


def cosine_loss(x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean") -> Tensor:
    """``1 − CosSim(x, y)``, in ``[0, 2]``.

    Minimal on the whole ray of vectors aligned with ``y``.  ``∇_x`` is
    orthogonal to ``x`` (descent turns ``x`` on a circle), has length
    ``sin∠(x, y)/|x|`` (explodes as ``x → 0``), does not depend on ``|y|``, and
    vanishes when ``x`` points exactly away from ``y``.
    """
    return _reduce(1.0 - cos_sim(x, y, eps), reduction)


def log_cosine_loss(x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean") -> Tensor:
    """``log(1 − CosSim(x, y) + eps)``: the log variant of :func:`cosine_loss`.

    Near alignment ``1 − cos θ ≈ θ²/2`` so ``|∇_x| ≈ 2/(θ|x|)`` grows without
    bound as the angle ``θ`` closes: fixed-step descent overshoots the angle.
    """
    return _log_of(cosine_loss(x, y, eps, reduction), eps)


def dot_sim(x: Tensor, y: Tensor, eps: float = EPS) -> Tensor:
    """``DotSim(x, y) = ⟨x|y⟩ / (⟨y|y⟩ + ε²)``, per sample (no reduction).

    The coordinate of ``x`` along ``y`` in units of ``|y|`` ("cosine similarity
    with length"): ``1`` at ``x = y``.  The part of ``x`` orthogonal to ``y``
    does not contribute.
    """
    return _dot(x, y) / (_dot(y, y) + eps * eps)


def mse_dot(x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean") -> Tensor:
    """``MSE(1, DotSim(x, y)) = mean_batch (1 − DotSim(x, y))²``.

    Fixes ``1 − DotSim`` (which decreases without bound as ``x`` grows along
    ``y``), but its minima are the whole hyperplane ``{x : ⟨x|y⟩ = ⟨y|y⟩}``.
    ``∇_x`` is parallel to ``y``; ``∇_y`` explodes as ``|y| → 0`` and vanishes
    as ``|y| → ∞``.
    """
    return _reduce((1.0 - dot_sim(x, y, eps)) ** 2, reduction)


def gen_sim(x: Tensor, y: Tensor, alpha: float, eps: float = EPS) -> Tensor:
    """``GenSim_α(x, y) = ⟨x|y⟩ / (|x|_ε^α |y|_ε^(2−α))`` for ``α ∈ [0, 2]``, per sample.

    Interpolates the similarities: ``α = 0`` is :func:`dot_sim`, ``α = 1`` is
    :func:`cos_sim` (exactly, with the same ``eps``), ``α = 2`` measures ``y``
    in units of ``|x|``.
    """
    if not 0.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must lie in [0, 2], got {alpha}")
    return _dot(x, y) / (_smooth_norm(x, eps) ** alpha * _smooth_norm(y, eps) ** (2.0 - alpha))


def gen_sim_loss(
    x: Tensor, y: Tensor, alpha: float = 0.5, eps: float = EPS, reduction: str = "mean"
) -> Tensor:
    """``MSE(GenSim_α(x, y), GenSim_α(y, y)) = mean_batch (GenSim_α(x, y) − GenSim_α(y, y))²``.

    The loss drawn for the generalised similarity (``blackgrad run losses``); ``GenSim_α(y, y) = 1``
    up to the ``eps`` guard, and it is kept in the graph (it matters for
    ``∇_y``).  ``α = 0`` gives :func:`mse_dot`, ``α = 1`` gives ``(1 − CosSim)²``.
    """
    per_sample = (gen_sim(x, y, alpha, eps) - gen_sim(y, y, alpha, eps)) ** 2
    return _reduce(per_sample, reduction)


def cosine_plus_mse(x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean") -> Tensor:
    """``1 − CosSim(x, y) + MSE(x, y)``: angle term plus distance term; single minimum at ``x = y``."""
    return _reduce(1.0 - cos_sim(x, y, eps) + mse(x, y, "none"), reduction)


def cosine_plus_mse_dot(
    x: Tensor, y: Tensor, eps: float = EPS, reduction: str = "mean"
) -> Tensor:
    """``1 − CosSim(x, y) + MSE(1, DotSim(x, y))``.

    ``1 − CosSim`` is minimal on the ray through ``y``, ``MSE(1, DotSim)`` on the
    hyperplane through ``y`` orthogonal to it; the two sets meet only at
    ``x = y``, which is the sum's single minimum.
    """
    per_sample = 1.0 - cos_sim(x, y, eps) + (1.0 - dot_sim(x, y, eps)) ** 2
    return _reduce(per_sample, reduction)


def sign_hinge_loss(x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """``loss(x, y) = −∑_d max(0, 1 − sgn(y_d⋅x_d))``, exactly as first written.

    Beware: each disagreeing sign contributes ``−2`` and each agreeing sign ``0``,
    so as written it is *minimised* by signs opposite to ``y`` (the leading
    minus looks like a slip), and since ``sgn`` is piecewise constant its
    autograd gradient is ``0`` almost everywhere.  Kept verbatim for the
    comparison; :func:`relu_sign_loss` is the usable sign loss.
    """
    per_sample = -torch.clamp(1.0 - torch.sign(y * x), min=0.0).sum(-1)
    return _reduce(per_sample, reduction)


def relu_sign_loss(x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """``loss(x, y) = ∑_d ReLU(−y_d⋅x_d)``: penalises each coordinate whose sign disagrees with ``y``.

    Zero on the whole orthant of ``y``; in a disagreeing coordinate
    ``∂/∂x_d = −y_d``, which pushes ``x_d`` across zero and no further.
    """
    return _reduce(torch.relu(-y * x).sum(-1), reduction)


#: name -> loss(x, y, reduction=...) with its default parameters (gen_sim_loss: α = 0.5)
LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": mse,
    "log_mse": log_mse,
    "cosine_loss": cosine_loss,
    "log_cosine_loss": log_cosine_loss,
    "mse_dot": mse_dot,
    "gen_sim_loss": gen_sim_loss,
    "cosine_plus_mse": cosine_plus_mse,
    "cosine_plus_mse_dot": cosine_plus_mse_dot,
    "sign_hinge_loss": sign_hinge_loss,
    "relu_sign_loss": relu_sign_loss,
}
