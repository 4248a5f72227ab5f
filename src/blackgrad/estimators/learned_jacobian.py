"""A learned Jacobian model ``J(α)`` (the second kind of learned backward)."""

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
#: the largest ``m + d`` whose default low-rank head emits its factors from the net; above it, the
#: factors are learned matrices scaled by the net's ``r`` outputs (:class:`_ScaledFactorsJacobian`)
NET_FACTORS_LIMIT = 512
SCALED_FACTORS_RANK = 64


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

    def factors(self, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """``U(α) / √r`` ``(B, m, r)`` and ``V(α)`` ``(B, d, r)``, whose product is the Jacobian."""
        factors = self.net(alpha)
        u = factors[:, : self.m * self.rank].reshape(-1, self.m, self.rank)
        v = factors[:, self.m * self.rank :].reshape(-1, self.d, self.rank)
        return u / self.rank**0.5, v

    def forward(self, alpha: Tensor) -> Tensor:
        u, v = self.factors(alpha)
        return u @ v.transpose(1, 2)

    def slope(self, alpha: Tensor, direction: Tensor) -> Tensor:
        """``J(α) ε`` as ``U (Vᵀ ε)``: ``(m + d)·r`` per row, never the ``m × d`` Jacobian."""
        u, v = self.factors(alpha)
        return (u @ (v.transpose(1, 2) @ direction.unsqueeze(2))).squeeze(2)

    def vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        """``gᵀ J(α)`` as ``(gᵀ U) Vᵀ``."""
        u, v = self.factors(alpha)
        return ((grad_out.unsqueeze(1) @ u) @ v.transpose(1, 2)).squeeze(1)


class _ScaledFactorsJacobian(nn.Module):
    """``α ↦ U diag(h(α)) V``, ``U`` ``(m, r)`` and ``V`` ``(r, d)`` learned, ``h`` an MLP with ``r`` outputs.

    For a wide device: the net emits ``r`` numbers per row instead of the
    ``(m + d)·r`` of :class:`_LowRankJacobian`, whose last layer alone has
    ``(m + d)·r`` times its width of weights (16.8 million at ``m = d =
    4096``) and sets the pace of training.  Memory and work per row grow like
    ``(m + d)·r``; the ``m × d`` Jacobian is never formed to train or to
    answer a VJP.  The structure of :class:`~blackgrad.estimators.learned_vjp.BilinearVJP`.
    """

    def __init__(self, d: int, m: int, rank: int, hidden: tuple[int, ...], embedding: nn.Module | None = None, zero: bool = False):
        super().__init__()
        self.m, self.d, self.rank = m, d, rank
        self.features = embedded(embedding, d, lambda width: MLP(width, rank, hidden))
        self.u = nn.Parameter(torch.randn(m, rank) / m**0.5)
        # zero: V = 0 (U stays random, so V still gets gradients)
        self.v = nn.Parameter(torch.zeros(rank, d) if zero else torch.randn(rank, d) / rank**0.5)

    def forward(self, alpha: Tensor) -> Tensor:
        return (self.u * self.features(alpha).unsqueeze(1)) @ self.v

    def slope(self, alpha: Tensor, direction: Tensor) -> Tensor:
        """``J(α) ε = U (h(α) ⊙ V ε)``."""
        return (self.features(alpha) * (direction @ self.v.T)) @ self.u.T

    def vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        """``gᵀ J(α) = ((gᵀ U) ⊙ h(α)) V``."""
        return ((grad_out @ self.u) * self.features(alpha)) @ self.v


class LearnedJacobian(LearnedEstimator):
    """A model ``α ↦ J(α)`` (``m × d``) trained so that ``J(α) ε ≈ s``, the measured slope.

    The VJP is ``grad_outᵀ J(α)`` at the real inputs.  Parameterisations:

    * ``rank=None``: a full Jacobian, an MLP with ``m·d`` outputs;
    * ``rank=r``: ``U(α)V(α)ᵀ``, ``(m + d)·r`` outputs, for large ``m·d``;
    * ``rank="auto"`` (default): full while ``m·d ≤ 1024``, rank 16 above,
      so that memory grows like ``(m + d)``, not ``m·d``; and for a wide
      device (``m + d > 512``) ``U diag(h(α)) V`` with learned ``U``, ``V``
      of rank 64 and a net ``h`` of 64 outputs, whose training step stays
      within a second at ``m = d = 4096`` (``benchmarks/learned_scaling.py``);
    * ``model=``: any ``nn.Module`` mapping ``(B, d)`` to ``(B, m, d)`` — the
      structure of the expected Jacobian when it is known (a Jacobian restored
      from probes of a device of known form), e.g. :class:`~blackgrad.nets.ConstantJacobian` for a linear
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
        zero = self.prior is not None  # a correction of the prior starts at none
        if self.rank == "auto" and m + d > NET_FACTORS_LIMIT:
            return _ScaledFactorsJacobian(d, m, SCALED_FACTORS_RANK, self.hidden, self.embedding, zero=zero)
        rank = self.rank if self.rank != "auto" else (None if m * d <= FULL_HEAD_LIMIT else DEFAULT_RANK)
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
        return self.correction_vjp(alpha, grad_out) + self.prior_vjp(alpha, grad_out)

    def correction_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        if isinstance(self.model, (_LowRankJacobian, _ScaledFactorsJacobian)):  # through the factors: (m + d)·r per row, not m·d
            return self.model.vjp(alpha, grad_out)
        return torch.einsum("bm,bmd->bd", grad_out, self.jacobian(alpha))

    def predicted_slope(self, rows: dict[str, Tensor]) -> Tensor:
        """``Ĵ(α) ε``, the prior's slope included: ``(N, m)``."""
        if isinstance(self.model, (_LowRankJacobian, _ScaledFactorsJacobian)):
            return self.model.slope(rows["alpha"], rows["direction"]) + self.prior_slope(rows)
        return torch.einsum("bmd,bd->bm", self.jacobian(rows["alpha"]), rows["direction"]) + self.prior_slope(rows)

    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        return training_loss(self.predicted_slope(rows), rows["slope"], self.loss)
