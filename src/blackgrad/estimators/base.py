"""The estimator contract, written once.

An estimator supplies the vector–Jacobian product (VJP) that a black box lacks.
It sees the black box as a map ``f: (B, d) -> (B, m)`` on flat rows
``α = (x, θ)`` — the flattened input ``x`` (``n`` numbers) followed by the
device parameters ``θ`` (``p`` numbers, the same in every row of a batch) —
and the backward pass hands it a :class:`VJPQuery`:

* ``alpha`` ``(B, d)``, the points of the forward pass;
* ``y`` ``(B, m)``, the device outputs there (already paid for);
* ``grad_out`` ``(B, m)``, the gradient of the loss with respect to ``y``;
* ``active`` ``(d,)`` bool, the coordinates whose gradient somebody needs.
  An estimator never spends an evaluation on an inactive coordinate;
* ``shared`` ``(d,)`` bool, the coordinates that are the same for the whole
  batch (θ).  Probes that move shared coordinates by the same amount in
  every row go to the device as one call (see :meth:`VJPQuery.directions`).

The methods:

``vjp(prober, query) -> Tensor``
    returns ``grad_α`` of shape ``(B, d)`` (its inactive columns are ignored).
    The only way to evaluate the device is ``prober(rows)`` with rows of shape
    ``(N, d)``, which returns ``(N, m)`` and counts ``N`` probe evaluations
    (the :class:`ProberLike` protocol).
``observe(alpha, y)``
    is offered every forward batch evaluated in training mode, at no device
    cost: forward data is free data for learned and secant estimators.
``probe_cost(d, m, batch) -> int``
    the number of probe evaluations one ``vjp`` call spends, for ``d`` active
    coordinates; the ledger agrees with it exactly (tests check this).
``state_dict()`` / ``load_state_dict(state)``
    everything needed to resume exactly, random generator included.
``calibrate(profile)``
    is handed the :class:`~blackgrad.calibration.DeviceProfile` a
    :class:`~blackgrad.BlackBox` measured (``needs_profile`` says whether it
    wants one); an estimator whose ``step`` was not given probes with the
    profile's step from then on (:meth:`Estimator.probe_step`).

Randomness comes from a ``torch.Generator`` the estimator owns (``seed``
argument), so runs repeat under a seed.  Compose by wrapping, not subclassing.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..calibration import DeviceProfile

DISTRIBUTIONS = ("rademacher", "gaussian")


def _check_option(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Reject an unknown option value with a message that lists the valid ones."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(repr(a) for a in allowed)}")


def check_positive(name: str, value: Any, *, integer: bool = False, allow_none: bool = False) -> None:
    """Reject a value that is not a positive (finite) number, naming the option."""
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        what = "a positive int" if integer else "a positive number"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")


SCHEMES = ("forward", "central")


def resolve_scheme(scheme: Any, antithetic: Any, default: str) -> str:
    """The difference scheme from ``scheme=`` or its older spelling ``antithetic=`` (a bool).

    ``"forward"``: ``f(α + hε) − f(α)``, reusing the forward output;
    ``"central"``: ``f(α + hε) − f(α − hε)`` (antithetic).  Giving both and
    disagreeing, or ``antithetic`` that is not a bool, is an error.
    """
    if antithetic is not None and not isinstance(antithetic, bool):
        raise ValueError(f"antithetic must be True or False (or use scheme='central' / 'forward'), got {antithetic!r}")
    if scheme is not None:
        _check_option("scheme", scheme, SCHEMES)
        if antithetic is not None and antithetic != (scheme == "central"):
            raise ValueError(f"scheme={scheme!r} contradicts antithetic={antithetic!r}; give one of them")
        return scheme
    if antithetic is not None:
        return "central" if antithetic else "forward"
    return default


def check_hidden(hidden: Any) -> tuple[int, ...]:
    """Hidden layer sizes: a sequence of positive ints (not a bare int, a string or bools)."""
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"hidden must be a sequence of positive ints such as (128, 128), got {hidden!r}")
    sizes = tuple(hidden)
    for size in sizes:
        check_positive("each hidden size", size, integer=True)
    return sizes


def default_step(dtype: torch.dtype, order: int) -> float:
    """A difference step that balances truncation and rounding error for ``dtype``.

    ``order`` 1 (one-sided differences): ``sqrt(eps)``; order 2 (central):
    ``eps ** (1/3)``.  For float32 that is about 3e-4 and 5e-3, for float64
    1.5e-8 and 6e-6.  Noisy devices need larger steps: pass ``step=``.
    """
    eps = torch.finfo(dtype).eps
    return eps ** (1.0 / (order + 1))


class ProberLike(Protocol):
    """What an estimator may call to evaluate the device: a :class:`~blackgrad.Prober`.

    ``prober(rows)`` evaluates rows ``(N, d)`` of ``α = (x, θ)`` and returns
    ``(N, m)``, counting ``N`` evaluations of ``kind`` (``"probe"``, or
    ``"calibration"``).  ``differentiable=True`` keeps the device's autograd
    graph (for a device written in torch).  Any function of rows that
    returns outputs will do outside a black box (a simulated device in an
    experiment), which is why this is a protocol and not a class.
    """

    def __call__(self, rows: Tensor, differentiable: bool = False, kind: str = "probe") -> Tensor: ...


@dataclass(frozen=True)
class VJPQuery:
    """What the backward pass asks of an estimator (see the module docstring)."""

    alpha: Tensor
    y: Tensor
    grad_out: Tensor
    active: Tensor
    shared: Tensor
    #: how many leading columns of ``alpha`` are the input ``x`` (the rest are θ); None: counted from ``shared``
    inputs: int | None = None

    @property
    def n_inputs(self) -> int:
        """The number ``n`` of input columns, ahead of θ's ``p`` shared ones."""
        return int((~self.shared).sum()) if self.inputs is None else self.inputs

    @property
    def batch(self) -> int:
        return self.alpha.shape[0]

    @property
    def dim(self) -> int:
        return self.alpha.shape[1]

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    def directions(self, count: int, generator: torch.Generator, distribution: str = "rademacher") -> Tensor:
        """``count`` random directions per sample, shape ``(count, B, d)``.

        Zero on inactive coordinates; on shared coordinates (θ) identical for
        every sample of the batch, so the probes of one direction go to the
        device in one call.  Each coordinate has mean 0 and variance 1.
        """
        _check_option("distribution", distribution, DISTRIBUTIONS)
        shape = (count, self.batch, self.dim)
        if distribution == "rademacher":
            draw = torch.randint(0, 2, shape, generator=generator).mul_(2).sub_(1)
        else:
            draw = torch.randn(shape, generator=generator)
        shared = self.shared.cpu()
        draw[:, :, shared] = draw[:, :1, shared]
        draw[:, :, ~self.active.cpu()] = 0
        return draw.to(device=self.alpha.device, dtype=self.alpha.real.dtype)

    def active_index(self) -> Tensor:
        return torch.nonzero(self.active).squeeze(1)


class Estimator(abc.ABC):
    """Base of all gradient estimators; the contract is the module docstring."""

    #: True for estimators that backpropagate through the device itself
    #: (:class:`~blackgrad.estimators.Exact`): :class:`~blackgrad.BlackBox`
    #: then keeps the autograd graph of the forward call instead of probing.
    differentiates_device: bool = False
    #: whether it can estimate gradients for complex inputs.  A :class:`~blackgrad.BlackBox`
    #: hands an estimator a complex device as a real one (each number as its real and
    #: imaginary parts), which any estimator that treats coordinates alike handles; one that
    #: reads meaning into them (an elementwise derivative, a complex step) cannot.
    supports_complex: bool = True
    #: the perturbation size the user gave (None: from the profile, else the dtype)
    step: float | None = None
    #: the device profile handed over by :meth:`calibrate`
    profile: "DeviceProfile | None" = None

    @property
    def needs_profile(self) -> bool:
        """Whether calibration would change what this estimator does.

        True for an estimator that probes the device with no ``step`` given;
        estimators that never probe (or were told their step) need none.
        """
        return self.step is None and self.probe_cost(1, 1, 64) > 0

    def calibrate(self, profile: "DeviceProfile | None") -> None:
        """Take the device profile measured by calibration (None: forget it)."""
        self.profile = profile

    def probe_step(self, dtype: torch.dtype, order: int = 1) -> float:
        """The step this estimator probes with: its own, else the profile's, else the dtype's.

        ``order`` is that of the difference scheme (1 one-sided, 2 central),
        for the dtype default (:func:`default_step`).
        """
        if self.step is not None:
            return self.step
        if self.profile is not None and self.profile.step is not None:
            return self.profile.step
        return default_step(dtype, order)

    def observe(self, alpha: Tensor, y: Tensor) -> None:
        """Learn from a forward batch; the default ignores it."""

    @abc.abstractmethod
    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        """Return the estimated ``grad_out ⋅ J(α)`` of shape ``(B, d)``, evaluating the device through ``prober`` only."""

    @abc.abstractmethod
    def probe_cost(self, d: int, m: int, batch: int) -> int:
        """Probe evaluations one ``vjp`` call spends on ``d`` active coordinates."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": type(self).__name__}
        generator = getattr(self, "generator", None)
        if generator is not None:
            state["generator"] = generator.get_state()
        return state

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse, before anything is changed, a state saved by another kind of estimator."""
        kind = state.get("kind") if isinstance(state, dict) else None
        if kind is not None and kind != type(self).__name__:
            raise ValueError(f"this state was saved by a {kind}; it cannot be loaded into a {type(self).__name__}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        generator = getattr(self, "generator", None)
        if generator is not None and "generator" in state:
            generator.set_state(state["generator"])

    def __repr__(self) -> str:
        fields = getattr(self, "_repr_fields", ())
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"{type(self).__name__}({inner})"


def _directional_slopes(prober: ProberLike, points: Tensor, directions: Tensor, step: float, y: Tensor | None) -> Tensor:
    """Measured slopes of the device along ``directions`` at ``points`` (both ``(N, d)``).

    One-sided ``(f(α + hε) − y) / h`` when the outputs ``y`` at ``points`` are
    given (the forward pass already paid for them), central
    ``(f(α + hε) − f(α − hε)) / 2h`` otherwise — in one prober request either
    way.  ``h`` is the step really taken along ``ε`` after rounding; a step too
    small for the dtype to represent raises instead of returning a zero or NaN
    slope.  Returns ``(N, m)``.
    """
    plus = points + step * directions
    moved = [plus - points]
    if y is None:
        minus = points - step * directions
        moved.append(points - minus)
        f_plus, f_minus = prober(torch.cat([plus, minus])).reshape(2, points.shape[0], -1)
        difference = f_plus - f_minus
    else:
        difference = prober(plus) - y
    taken = sum(moved)  # the whole displacement between the two evaluations
    norm = directions.pow(2).sum(1)
    length = (taken * directions).sum(1) / norm.clamp(min=torch.finfo(norm.dtype).tiny)
    if bool(((length == 0) & (norm > 0)).any()):
        raise ValueError(
            f"a probe step of {step:g} vanishes in {points.dtype} at these inputs (|α| up to "
            f"{points.abs().max().item():.3g}); pass a larger step="
        )
    return difference / length.clamp(min=torch.finfo(norm.dtype).tiny).unsqueeze(1)


def _make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator
