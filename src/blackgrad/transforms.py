"""Gradient transforms: deliberately damaged backward passes for any model.

The "destroy the Jacobian" experiment (``blackgrad run destroy-jacobian``) asks how much a backward pass can
be wrong and still train: flip the sign of random components of ``∇x`` (the
gradient passed from layer to layer), of ``∇θ`` (parameter gradients) or of
``θ`` (the weights the backward pass multiplies by), or keep only their sign.
A black box's estimated backward is wrong in similar ways, so these transforms
are a controlled stand-in for an imperfect estimator.

A transform maps a tensor to a tensor of the same shape, elementwise:

* :class:`SignFlip` ``(p)``: each component's sign flipped with probability ``p``
  (``p = 0.5`` keeps no information, ``p = 1`` is gradient ascent);
* :class:`SignOnly`: ``sign(g)``;
* :class:`PowerSign` ``(γ)``: ``|g|^γ ⋅ sign(g)`` — ``γ = 1`` the identity,
  ``γ = 0`` sign-only, in between "intermediate values for sign
  keeping".

Random transforms own a ``torch.Generator`` (``seed`` argument; a fresh random
seed when ``None``) so a run repeats exactly; ``state_dict()`` /
``load_state_dict()`` save and restore it.  For a stack of models trained at
once (every tensor's first dimension counting the members), ``p`` and ``γ``
may be per-member sequences.

Where to apply one:

* ``∇x`` — :class:`PerturbBackward` ``(transform)``, an identity in the forward
  pass whose backward applies the transform to the gradient flowing through it.
  Insert it between layers::

      net = nn.Sequential(nn.Linear(2, 32), nn.GELU(), PerturbBackward(SignFlip(0.3, seed=0)),
                          nn.Linear(32, 2))

* ``∇θ`` — :func:`apply_to_gradients` after ``backward()`` and before
  ``optimizer.step()``, or :func:`register_gradient_hooks` once::

      loss.backward()
      apply_to_gradients(net.parameters(), SignOnly())
      optimizer.step()

* ``θ`` as the backward pass sees it — :class:`FeedbackLinear`, a linear layer
  whose forward is exact and whose backward computes ``∇x = ∇y ⋅ T(W)`` with
  the transformed weight ``T(W)`` (the Jacobian of a linear layer with
  respect to its input *is* ``W``; the forward never sees ``T(W)``)::

      layer = FeedbackLinear(32, 32, feedback=SignOnly())   # sign-concordant feedback
"""

from __future__ import annotations

import abc
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .estimators.base import _make_generator
from .function import gradiator

__all__ = [
    "GradientTransform",
    "SignFlip",
    "SignOnly",
    "PowerSign",
    "PerturbBackward",
    "perturb_backward",
    "apply_to_gradients",
    "register_gradient_hooks",
    "FeedbackLinear",
    "feedback_linear",
]


class GradientTransform(abc.ABC):
    """An elementwise map applied to a gradient (or weight) tensor.

    ``transform(g)`` returns a new tensor with ``g``'s shape, dtype and device
    and never modifies ``g``.  Random transforms keep their generator in
    ``self.generator`` (CPU; draws are moved to ``g``'s device), which
    ``state_dict`` / ``load_state_dict`` save and restore.
    """

    generator: torch.Generator | None = None

    @abc.abstractmethod
    def __call__(self, g: Tensor) -> Tensor:
        """Return the transformed tensor."""

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({fields})"


def _per_member(value: float | Tensor, g: Tensor) -> float | Tensor:
    """A scalar as is; per-member values (1-D) shaped to broadcast along ``g``'s first dimension."""
    if isinstance(value, float):
        return value
    if g.dim() == 0 or value.shape[0] != g.shape[0]:
        raise ValueError(f"{value.shape[0]} per-member values for a tensor of shape {tuple(g.shape)}: "
                         "the first dimension must count the members")
    return value.to(device=g.device, dtype=g.dtype).view(-1, *([1] * (g.dim() - 1)))


def _parameter(name: str, value: float | Tensor | list, low: float, high: float) -> float | Tensor:
    """Validate a scalar or a 1-D sequence of finite per-member values in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor, list, tuple)):
        raise ValueError(f"{name} must be a number or a 1-D sequence of numbers, got {value!r}")
    tensor = torch.as_tensor(value, dtype=torch.float64)
    if tensor.dim() > 1 or not bool((torch.isfinite(tensor) & (tensor >= low) & (tensor <= high)).all()):
        bounds = f"≥ {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be finite and {bounds} (a number or a 1-D sequence), got {value!r}")
    return float(tensor) if tensor.dim() == 0 else tensor


class SignFlip(GradientTransform):
    """Flip the sign of each component independently with probability ``p``.

    The result equals ``g ⋅ s`` with ``s = −1`` with probability ``p`` and ``+1``
    otherwise, so its mean is ``(1 − 2p) ⋅ g``: still a descent direction on
    average for ``p < 0.5``, pure noise at ``p = 0.5``, ascent above.
    A fresh mask is drawn at every call.

    Args:
        p: flip probability in ``[0, 1]``; or a 1-D sequence of ``S``
            probabilities for a stack of ``S`` models whose tensors all have
            the members as their first dimension (``p[i]`` applies to ``g[i]``).
        seed: seed of the transform's own generator (``None``: random).
    """

    def __init__(self, p: float | Tensor, seed: int | None = 0) -> None:
        self.p = _parameter("SignFlip's probability p", p, 0.0, 1.0)
        self.generator = _make_generator(seed)

    def __call__(self, g: Tensor) -> Tensor:
        flip = torch.rand(g.shape, generator=self.generator).to(g.device) < _per_member(self.p, g)
        return torch.where(flip, -g, g)


class SignOnly(GradientTransform):
    """Keep only the sign: ``sign(g)`` (``0`` stays ``0``).  Same as ``PowerSign(0)``."""

    def __call__(self, g: Tensor) -> Tensor:
        return torch.sign(g)


class PowerSign(GradientTransform):
    """``|g|^γ ⋅ sign(g)``: interpolates between sign-only (``γ = 0``) and identity (``γ = 1``).

    Exact at both ends: ``γ = 1`` returns ``g``'s values exactly, ``γ = 0``
    returns ``sign(g)``.  ``γ > 1`` sharpens (large components dominate more).

    Args:
        gamma: exponent ``γ ≥ 0``; or a 1-D sequence of per-member exponents
            for a stack of models (as :class:`SignFlip`'s ``p``).
    """

    def __init__(self, gamma: float | Tensor) -> None:
        self.gamma = _parameter("PowerSign's exponent gamma", gamma, 0.0, float("inf"))

    def __call__(self, g: Tensor) -> Tensor:
        return g.abs().pow(_per_member(self.gamma, g)) * torch.sign(g)


def _check_transform(transform: Any) -> None:
    if not callable(transform):
        raise TypeError(f"a transform must be callable on a tensor, got {type(transform).__name__}")


def _keep(x: Tensor, transform: GradientTransform) -> Tensor:
    return x.clone()  # a new tensor: an autograd Function's output must not alias its input


def _transform_gradient(x: Tensor, transform: GradientTransform, grad: Tensor) -> tuple[Tensor, None]:
    return transform(grad), None


_perturb = gradiator(_keep, _transform_gradient, name="perturb_backward")


class PerturbBackward(nn.Module):
    """Identity forward; the backward applies ``transform`` to the incoming gradient.

    Placed between two layers it damages ``∇x``, the gradient that the later
    layers send to the earlier ones; nothing before it sees the true gradient.
    Built with :func:`blackgrad.gradiator`.  Any callable ``Tensor -> Tensor``
    of the same shape works as ``transform``.

    Example::

        flip = PerturbBackward(SignFlip(0.45, seed=1))
        y = flip(x)                  # y == x
        y.backward(g)                # x.grad == g with ~45 % of its signs flipped
    """

    def __init__(self, transform: GradientTransform) -> None:
        super().__init__()
        _check_transform(transform)
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        return _perturb(x, self.transform)

    def extra_repr(self) -> str:
        return repr(self.transform)


def perturb_backward(transform: GradientTransform) -> PerturbBackward:
    """Return a :class:`PerturbBackward` for ``transform`` (a module, also usable as a function)."""
    return PerturbBackward(transform)


def _parameter_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def apply_to_gradients(parameters: Tensor | Iterable[Tensor], transform: GradientTransform) -> None:
    """Replace each ``p.grad`` by ``transform(p.grad)``, in place; skip ``None`` gradients.

    Call it between ``loss.backward()`` and ``optimizer.step()``.  It acts on
    the accumulated gradient, so with gradient accumulation over several
    backward calls it transforms the sum; :func:`register_gradient_hooks`
    transforms each backward's contribution instead.
    """
    _check_transform(transform)
    with torch.no_grad():
        for p in _parameter_list(parameters):
            if p.grad is not None:
                p.grad.copy_(transform(p.grad))


def register_gradient_hooks(parameters: Tensor | Iterable[Tensor], transform: GradientTransform) -> list[RemovableHandle]:
    """Make every backward pass apply ``transform`` to the gradient of each parameter.

    The hook runs once per backward call, on that call's gradient, before it
    is accumulated into ``p.grad``.  Returns the handles; ``handle.remove()``
    undoes it.
    """
    _check_transform(transform)
    return [p.register_hook(transform) for p in _parameter_list(parameters)]


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: GradientTransform) -> Tensor:
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight, bias)
    out = x @ weight.mT
    return out if bias is None else out + bias.unsqueeze(-2)


def _linear_backward(x, weight, bias, feedback, grad, needs_input_grad):
    need_x, need_w, need_b = needs_input_grad[:3]
    # The transform is drawn only when ∇x is wanted, so an input layer spends no randomness.
    grad_x = grad @ feedback(weight) if need_x else None
    if weight.dim() == 2:  # one layer: sum over every leading dimension of x
        grad, x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
    grad_w = grad.mT @ x if need_w else None
    grad_b = grad.sum(-2) if need_b else None
    return grad_x, grad_w, grad_b, None


_feedback_linear = gradiator(_linear, _linear_backward, name="feedback_linear")


def feedback_linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: GradientTransform) -> Tensor:
    """``x ⋅ Wᵀ + b`` whose backward uses ``feedback(W)`` in place of ``W`` for ``∇x``.

    ``∇W = ∇yᵀ ⋅ x`` and ``∇b = Σ ∇y`` are exact; ``∇x = ∇y ⋅ feedback(W)``.
    With ``SignFlip(p)`` a fresh random set of weights is sign-flipped in
    every backward pass; with ``SignOnly()`` the feedback is ``sign(W)``.
    Shapes as :func:`torch.nn.functional.linear` (``x`` of shape ``(..., in)``),
    or a stack of ``S`` independent layers: ``weight (S, out, in)``, ``bias
    (S, out)``, ``x (S, B, in)`` → ``(S, B, out)`` (an ensemble trained at once).
    """
    _check_transform(feedback)
    if weight.dim() > 2 and (x.dim() != weight.dim() or (bias is not None and bias.dim() != weight.dim() - 1)):
        raise ValueError(
            f"a stack of weights {tuple(weight.shape)} needs x of shape (S, B, in) and bias (S, out); "
            f"got x {tuple(x.shape)} and bias {None if bias is None else tuple(bias.shape)}"
        )
    return _feedback_linear(x, weight, bias, feedback)


class FeedbackLinear(nn.Linear):
    """An ``nn.Linear`` whose backward multiplies by ``feedback(W)`` instead of ``W``.

    The "destroy the Jacobian" experiment perturbs "``θ``" as well as ``∇x`` and ``∇θ``: for a linear layer
    ``∇x = ∇y ⋅ θ``, so this is where ``θ`` enters the backward pass.  The
    forward pass and the parameter gradients are those of ``nn.Linear``; only
    the gradient sent to the previous layer changes.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        feedback: the transform applied to the weight in the backward pass.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, feedback: GradientTransform,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _check_transform(feedback)
        self.feedback = feedback

    def forward(self, x: Tensor) -> Tensor:
        return _feedback_linear(x, self.weight, self.bias, self.feedback)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feedback={self.feedback!r}"
