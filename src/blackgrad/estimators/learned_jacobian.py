"""Option 2 of seed 000: a learned Jacobian model ``J(α)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nets import MLP, embedded
from .learned import LearnedEstimator, training_loss


class _FullJacobian(nn.Module):
    """``α ↦ J(α)``: an MLP with ``m·d`` outputs reshaped to ``(m, d)``."""

    def __init__(self, d: int, m: int, hidden: tuple[int, ...], embedding: nn.Module | None = None):
        super().__init__()
        self.m, self.d = m, d
        self.net = embedded(embedding, d, lambda width: MLP(width, m * d, hidden))

    def forward(self, alpha: Tensor) -> Tensor:
        return self.net(alpha).reshape(-1, self.m, self.d)


class _LowRankJacobian(nn.Module):
    """``α ↦ U(α) V(α)ᵀ / √r`` with ``U`` ``(m, r)`` and ``V`` ``(d, r)``: (m + d)·r outputs."""

    def __init__(self, d: int, m: int, rank: int, hidden: tuple[int, ...], embedding: nn.Module | None = None):
        super().__init__()
        self.m, self.d, self.rank = m, d, rank
        self.net = embedded(embedding, d, lambda width: MLP(width, (m + d) * rank, hidden))

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
    * ``model=``: any ``nn.Module`` mapping ``(B, d)`` to ``(B, m, d)`` — the
      structure of the expected Jacobian when it is known (seed 001's restore
      experiment), e.g. :class:`~blackgrad.nets.ConstantJacobian` for a linear
      device, which then recovers the device matrix itself.

    Cost: see :class:`~blackgrad.estimators.learned.LearnedEstimator` (default
    one one-sided probe per sample).
    """

    _repr_fields = ("probes", "rank", "scheme", "loss", "updates")

    def __init__(self, model: nn.Module | None = None, rank: int | None = None, hidden: tuple[int, ...] = (128, 128), **options: Any) -> None:
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive int or None, got {rank!r}")
        super().__init__(model=model, **options)
        self.rank = rank
        self.hidden = tuple(hidden)

    def default_model(self, d: int, m: int) -> nn.Module:
        if self.rank is None:
            return _FullJacobian(d, m, self.hidden, self.embedding)
        return _LowRankJacobian(d, m, self.rank, self.hidden, self.embedding)

    def jacobian(self, alpha: Tensor) -> Tensor:
        """The model's Jacobian at ``alpha``: ``(B, m, d)``."""
        jacobian = self.model(alpha)
        d, m = self.sizes
        if jacobian.shape != (alpha.shape[0], m, d):
            raise ValueError(f"the Jacobian model returned shape {tuple(jacobian.shape)}, expected {(alpha.shape[0], m, d)}")
        return jacobian

    def predict_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        return torch.einsum("bm,bmd->bd", grad_out, self.jacobian(alpha))

    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        predicted = torch.einsum("bmd,bd->bm", self.jacobian(rows["alpha"]), rows["direction"])
        return training_loss(predicted, rows["slope"], self.loss)
