"""Option 2 of seed 000: a learned Jacobian model ``J(α)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nets import MLP, embedded
from .base import check_hidden
from .learned import LearnedEstimator, resolve_prior, training_loss

#: the largest ``m·d`` that gets a full Jacobian head by default; above it, a rank-16 one
FULL_HEAD_LIMIT = 1024
DEFAULT_RANK = 16


class _FullJacobian(nn.Module):
    """``α ↦ J(α)``: an MLP with ``m·d`` outputs reshaped to ``(m, d)``; ``zero``: starts at J = 0."""

    def __init__(self, d: int, m: int, hidden: tuple[int, ...], embedding: nn.Module | None = None, zero: bool = False):
        super().__init__()
        self.m, self.d = m, d
        self.net = embedded(embedding, d, lambda width: MLP(width, m * d, hidden))
        if zero:
            last = self.net[-1] if isinstance(self.net, MLP) else self.net[-1][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, alpha: Tensor) -> Tensor:
        return self.net(alpha).reshape(-1, self.m, self.d)


class _LowRankJacobian(nn.Module):
    """``α ↦ U(α) V(α)ᵀ / √r`` with ``U`` ``(m, r)`` and ``V`` ``(d, r)``: (m + d)·r outputs."""

    def __init__(self, d: int, m: int, rank: int, hidden: tuple[int, ...], embedding: nn.Module | None = None, zero: bool = False):
        super().__init__()
        self.m, self.d, self.rank = m, d, rank
        self.net = embedded(embedding, d, lambda width: MLP(width, (m + d) * rank, hidden))
        if zero:  # U = 0 (V stays random, so U still gets gradients)
            last = self.net[-1] if isinstance(self.net, MLP) else self.net[-1][-1]
            with torch.no_grad():
                last.weight[: m * rank] = 0
                last.bias[: m * rank] = 0

    def forward(self, alpha: Tensor) -> Tensor:
        factors = self.net(alpha)
        u = factors[:, : self.m * self.rank].reshape(-1, self.m, self.rank)
        v = factors[:, self.m * self.rank :].reshape(-1, self.d, self.rank)
        return u @ v.transpose(1, 2) / self.rank**0.5


class LearnedJacobian(LearnedEstimator):
    """A model ``α ↦ J(α)`` (``m × d``) trained so that ``J(α) ε ≈ s``, the measured slope.

    The VJP is ``grad_outᵀ J(α)`` at the real inputs.  Parameterisations:

    * ``rank=None``: a full Jacobian, an MLP with ``m·d`` outputs;
    * ``rank=r``: ``U(α)V(α)ᵀ``, ``(m + d)·r`` outputs, for large ``m·d``;
    * ``rank="auto"`` (default): full while ``m·d ≤ 1024``, rank 16 above,
      so that memory grows like ``(m + d)``, not ``m·d``;
    * ``model=``: any ``nn.Module`` mapping ``(B, d)`` to ``(B, m, d)`` — the
      structure of the expected Jacobian when it is known (seed 001's restore
      experiment), e.g. :class:`~blackgrad.nets.ConstantJacobian` for a linear
      device, which then recovers the device matrix itself.

    ``prior="twin"`` (the default, ``"auto"``, unless ``model=`` is given): the Jacobian is that of a
    :class:`~blackgrad.estimators.DigitalTwin` fitted to the forward values
    (which cost nothing) and to the same probe slopes, plus the model's
    correction, which starts at zero and is trained on what the twin's slopes
    leave unexplained.  A Jacobian model alone sees only one random
    direction of a ``d``-dimensional input per probe; the twin also sees
    every output of every forward pass.  ``prior=None``: the Jacobian model
    alone.

    Cost: see :class:`~blackgrad.estimators.learned.LearnedEstimator` (default
    one one-sided probe per sample).
    """

    _repr_fields = ("probes", "rank", "scheme", "loss", "updates")

    def __init__(
        self,
        model: nn.Module | None = None,
        rank: int | str | None = "auto",
        hidden: tuple[int, ...] = (128, 128),
        prior: Any = "auto",
        **options: Any,
    ) -> None:
        if rank not in (None, "auto") and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int, 'auto' or None, got {rank!r}")
        super().__init__(model=model, **options)
        self.rank = rank
        self.hidden = check_hidden(hidden)
        # a model given carries the structure the user knows; the default model gets the twin
        self.prior = resolve_prior(("twin" if model is None else None) if prior == "auto" else prior, self, self.hidden)

    def default_model(self, d: int, m: int) -> nn.Module:
        rank = self.rank if self.rank != "auto" else (None if m * d <= FULL_HEAD_LIMIT else DEFAULT_RANK)
        zero = self.prior is not None  # a correction of the prior starts at none
        if rank is None:
            return _FullJacobian(d, m, self.hidden, self.embedding, zero=zero)
        return _LowRankJacobian(d, m, rank, self.hidden, self.embedding, zero=zero)

    def jacobian(self, alpha: Tensor) -> Tensor:
        """The model's Jacobian at ``alpha``: ``(B, m, d)``."""
        jacobian = self.model(alpha)
        d, m = self.sizes
        if jacobian.shape != (alpha.shape[0], m, d):
            raise ValueError(f"the Jacobian model returned shape {tuple(jacobian.shape)}, expected {(alpha.shape[0], m, d)}")
        return jacobian

    def predict_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        return torch.einsum("bm,bmd->bd", grad_out, self.jacobian(alpha)) + self.prior_vjp(alpha, grad_out)

    def predicted_slope(self, rows: dict[str, Tensor]) -> Tensor:
        """``Ĵ(α) ε``, the prior's slope included: ``(N, m)``."""
        return torch.einsum("bmd,bd->bm", self.jacobian(rows["alpha"]), rows["direction"]) + self.prior_slope(rows)

    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        return training_loss(self.predicted_slope(rows), rows["slope"], self.loss)
