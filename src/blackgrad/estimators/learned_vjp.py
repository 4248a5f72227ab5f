"""A learned vector–Jacobian product, linear in grad_out by construction (the third kind of learned backward)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nets import MLP, embedded
from .base import _check_option, check_positive, check_hidden
from .learned import LearnedEstimator, random_training_grad, resolve_prior, training_loss

TRAINING_GRADS = ("grad_out", "basis", "random")


class BilinearVJP(nn.Module):
    """``(α, g) ↦ ((g W_in) ⊙ h(α)) W_out``: linear in ``g`` for every ``α``.

    ``h`` is a feature net ``(B, d) → (B, r)`` (default an MLP); ``W_in``
    ``(m, r)`` and ``W_out`` ``(r, d)`` are learned matrices.  No bias touches
    ``g``, so ``v(α, λg) = λ v(α, g)`` and ``v(α, g₁) + v(α, g₂) = v(α, g₁ + g₂)``
    hold exactly (the symmetries every VJP has), and the implied Jacobian is
    ``W_in diag(h(α)) W_out`` (``m × d``).
    """

    def __init__(
        self,
        d: int,
        m: int,
        rank: int = 64,
        hidden: tuple[int, ...] = (128, 128),
        features: nn.Module | None = None,
        embedding: nn.Module | None = None,
        zero: bool = False,
    ):
        super().__init__()
        self.features = features if features is not None else embedded(embedding, d, lambda width: MLP(width, rank, hidden))
        self.w_in = nn.Parameter(torch.randn(m, rank) / m**0.5)
        # zero: start at v = 0 (a correction of a prior); W_in stays random so W_out gets gradients
        self.w_out = nn.Parameter(torch.zeros(rank, d) if zero else torch.randn(rank, d) / rank**0.5)

    def forward(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        return ((grad_out @ self.w_in) * self.features(alpha)) @ self.w_out


class LearnedVJP(LearnedEstimator):
    """A model ``(α, grad_out) ↦ grad_in`` trained so that ``v(α, g)·ε ≈ gᵀ s``.

    ``s`` is the measured slope along the probe direction ``ε``.  The model is
    a :class:`BilinearVJP`, linear in ``g`` by construction.  Which ``g`` it
    trains with (where the model should be accurate):

    * ``"grad_out"``: the gradients actually flowing in training, so "the
      model gets finer where we are evaluating the device";
    * ``"basis"``: random canonical basis vectors;
    * ``"random"``: random unit Gaussian vectors.

    ``probes``: probe directions per sample.

    ``prior="twin"`` (the default, ``"auto"``, unless ``features=`` is given): the VJP is that of a
    :class:`~blackgrad.estimators.DigitalTwin` fitted to the forward values
    (free) and the same probe slopes, plus the bilinear model's correction,
    which starts at zero (see :class:`~blackgrad.estimators.LearnedJacobian`).
    ``prior=None``: the bilinear model alone.

    Args:
        rank: width ``r`` of the bilinear core.
        hidden: hidden sizes of the default feature MLP.
        features: a feature net ``(B, d) → (B, rank)`` replacing the MLP
            (e.g. :class:`~blackgrad.nets.LogLinExpNet`).
        train_grad: ``"grad_out"``, ``"basis"`` or ``"random"``.
        (others: see :class:`~blackgrad.estimators.learned.LearnedEstimator`)
    """

    _repr_fields = ("probes", "rank", "train_grad", "loss", "updates")

    def __init__(
        self,
        rank: int = 64,
        hidden: tuple[int, ...] = (128, 128),
        features: nn.Module | None = None,
        train_grad: str = "grad_out",
        prior: Any = "auto",
        **options: Any,
    ) -> None:
        _check_option("train_grad", train_grad, TRAINING_GRADS)
        check_positive("rank", rank, integer=True)
        if "model" in options:
            raise TypeError("LearnedVJP builds its own bilinear model; pass features= to change the feature net")
        super().__init__(**options)
        self.rank = rank
        self.hidden = check_hidden(hidden)
        self.features = features
        self.train_grad = train_grad
        # a feature net given carries the structure the user chose; the default net gets the twin
        self.prior = resolve_prior(("twin" if features is None else None) if prior == "auto" else prior, self, self.hidden)

    def default_model(self, d: int, m: int) -> nn.Module:
        return BilinearVJP(d, m, self.rank, self.hidden, self.features, self.embedding, zero=self.prior is not None)

    def predict_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        return self.correction_vjp(alpha, grad_out) + self.prior_vjp(alpha, grad_out)

    def correction_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        return self.model(alpha, grad_out)

    def _response(self, rows: dict[str, Tensor], grad: Tensor) -> Tensor:
        """``v̂(α, g)·ε`` for the rows' directions, the prior's ``gᵀ(slope)`` included."""
        own = (self.model(rows["alpha"], grad) * rows["direction"]).sum(1)
        prior = self.prior_slope(rows)
        return own if self.prior is None else own + (grad * prior).sum(1)

    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        grad = random_training_grad(rows, self.train_grad, self.generator)
        return training_loss(self._response(rows, grad), (grad * rows["slope"]).sum(1), self.loss)
