"""The estimator contract, written once.

An estimator supplies the vector–Jacobian product (VJP) that a black box lacks.
It sees the black box as a map ``f: (B, d) -> (B, m)`` on flat rows
``α = (x, θ)`` — the flattened input ``x`` (``n`` numbers) followed by the
device parameters ``θ`` (``p`` numbers, the same in every row of a batch) —
and the backward pass hands it a :class:`VJPQuery`, which owns that layout:

* ``x`` ``(B, n)`` and ``theta`` ``(p,)`` (or None), the point of the
  forward pass; ``alpha`` ``(B, d)``, the same as rows, joined on first use;
* ``y`` ``(B, m)``, the device outputs there (already paid for);
* ``grad_out`` ``(B, m)``, the gradient of the loss with respect to ``y``;
* ``active`` ``(d,)`` bool, the coordinates whose gradient somebody needs
  (``need_x``, ``need_theta``).  An estimator never spends an evaluation on
  an inactive coordinate;
* ``shared`` ``(d,)`` bool, the coordinates that are the same for the whole
  batch (θ).  Probes that move shared coordinates by the same amount in
  every row go to the device as one call (see :meth:`VJPQuery.directions`
  and :meth:`VJPQuery.evaluate`).

The methods:

``vjp(prober, query) -> Tensor | VJP``
    returns ``grad_α`` of shape ``(B, d)`` (its inactive columns are ignored;
    θ's columns are summed over the batch by :meth:`VJPQuery.gradient`), or
    the two parts as a :class:`VJP` (θ's already summed).  The only way to
    evaluate the device is ``prober(rows)`` with rows of shape ``(N, d)``,
    which returns ``(N, m)`` and counts ``N`` probe evaluations (the
    :class:`ProberLike` protocol); ``query.evaluate(prober, rows, group)``
    does the same and tells a :class:`~blackgrad.Prober` which rows share a
    θ, so that it need not find out (the built-in estimators use it).
``observe(alpha, y)``
    is offered every forward batch evaluated in training mode, at no device
    cost: forward data is free data for learned and secant estimators.
``withholds(part) -> bool``
    whether the last ``vjp`` withheld ``part``'s gradient (``"inputs"`` or
    ``"params"``): a :class:`~blackgrad.BlackBox` then passes no gradient
    (None) for that part instead of the zeros ``vjp`` returned for it, so
    that an optimiser leaves the parameters before the device, and its own
    state for them, where they were.  The default withholds nothing.
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
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor

from .._random import make_generator as _make_generator  # one rule for seeds, devices' too

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

    A :class:`~blackgrad.Prober` also takes probes already grouped by their
    θ (``prober.evaluate(x, thetas, group)``, see
    :class:`GroupedProber`); :meth:`VJPQuery.evaluate` uses that door when
    the prober has it, so that the built-in estimators never make the
    prober sort rows by their θ.
    """

    def __call__(self, rows: Tensor, differentiable: bool = False, kind: str = "probe") -> Tensor: ...


class GroupedProber(ProberLike, Protocol):
    """A prober that also takes its probes grouped by θ (what :class:`~blackgrad.Prober` is).

    ``evaluate(x, theta, group)``: inputs ``x`` ``(N, n)``; ``theta`` None
    (no parameters), one ``(p,)`` for every row, or distinct values
    ``(G, p)`` with ``group`` ``(N,)`` saying which row is at which.  The
    groups go to the device in the order of ``theta``'s rows, one call each
    (split at ``max_batch``).
    """

    def evaluate(
        self, x: Tensor, theta: Tensor | None = None, group: Tensor | None = None, kind: str = "probe", differentiable: bool = False
    ) -> Tensor: ...


class VJP(NamedTuple):
    """An estimator's answer in parts: ``x`` ``(B, n)`` and ``theta`` ``(p,)``, summed over the batch.

    ``vjp`` may return this instead of ``grad_α`` ``(B, d)`` when its θ
    gradient comes already summed (a surrogate's autograd gives it so).
    None: a zero gradient for that part.
    """

    x: Tensor | None
    theta: Tensor | None = None


_MASKS: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def _layout_masks(n: int, p: int, need_x: bool, need_theta: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """The ``active`` and ``shared`` masks of a layout, made once per layout and kept.

    Building them from Python lists on every backward pass cost more than a
    cheap device's own backward.
    """
    key = (n, p, need_x, need_theta, device)
    masks = _MASKS.get(key)
    if masks is None:
        active = torch.tensor([need_x] * n + [need_theta] * p, dtype=torch.bool, device=device)
        shared = torch.tensor([False] * n + [True] * p, dtype=torch.bool, device=device)
        masks = _MASKS[key] = (active, shared)
    return masks


def join(x: Tensor, theta: Tensor | None) -> Tensor:
    """Rows ``α = (x, θ)`` ``(B, n + p)``: θ appended to every row of ``x`` (``x`` itself when there is no θ)."""
    if theta is None:
        return x
    return torch.cat([x, theta.expand(x.shape[0], -1)], dim=1)


def evaluate_grouped(
    evaluate: Any,
    rows: Tensor,
    n: int,
    theta: Tensor | None,
    group: Tensor | None = None,
    kind: str = "probe",
    differentiable: bool = False,
) -> Tensor:
    """Rows ``α`` ``(N, n + p)`` evaluated through a grouped prober's ``evaluate``, by their θ group.

    ``group`` ``(N,)``: rows with the same value share their θ (whoever drew
    the rows knows this); None: one θ for every row, checked (rows that
    disagree are grouped by their θ, as whole rows are).  The inputs go
    as they are and one θ per group: given a group, nothing is compared row
    by row.  Groups
    whose θ coincide are merged into one device call, and the calls are made
    in θ's lexicographic order — the order whole rows get from
    :meth:`~blackgrad.Prober.__call__`, so that both doors make the same
    calls and a noisy device draws the same noise through either.
    """
    x = rows if theta is None else rows[:, :n]
    if theta is None or rows.shape[0] == 0:  # no θ (no rows: no call at all)
        return evaluate(x, theta, kind=kind, differentiable=differentiable)
    if group is None:
        # One θ, the caller says: taken from the rows (a graph through them stays whole) and
        # checked, since a row whose θ moved would otherwise be evaluated at another θ without
        # a word; rows that disagree are grouped by their θ instead.
        one = rows[0, n:]
        if bool((rows[:, n:] == one).all()):
            return evaluate(x, one, kind=kind, differentiable=differentiable)
        group = torch.arange(rows.shape[0], device=rows.device)
    ids, group = torch.unique(group, return_inverse=True)
    first = torch.full((ids.shape[0],), rows.shape[0], dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, group, torch.arange(rows.shape[0], device=rows.device), "amin")
    table = rows[first, n:]
    keys = torch.view_as_real(table).flatten(1) if table.is_complex() else table
    distinct, merged = torch.unique(keys.detach(), dim=0, return_inverse=True)
    if distinct.shape[0] == 1:
        return evaluate(x, table[0], kind=kind, differentiable=differentiable)
    # one θ per merged group, in sorted order: that of the first of its members
    keep = torch.full((distinct.shape[0],), table.shape[0], dtype=torch.long, device=rows.device)
    keep.scatter_reduce_(0, merged, torch.arange(table.shape[0], device=rows.device), "amin")
    return evaluate(x, table[keep], merged[group], kind=kind, differentiable=differentiable)


class VJPQuery:
    """What the backward pass asks of an estimator, and the owner of the ``α = (x, θ)`` layout.

    A :class:`~blackgrad.BlackBox` makes it from the parts
    (:meth:`from_parts`): the inputs ``x`` ``(B, n)``, the parameters ``θ``
    ``(p,)`` shared by the batch, and which of the two need a gradient.
    Outside a box it can be made from whole rows ``alpha`` ``(B, d)`` with
    the masks ``active`` and ``shared`` (θ's columns last; ``inputs``: how
    many columns are ``x``, counted from ``shared`` when None).

    The rows ``alpha`` are joined only if an estimator reads them (a learned
    model takes α as its input); :meth:`evaluate` hands probes to the
    device grouped by their θ, and :meth:`gradient` splits an estimator's
    answer into ``(grad_x, grad_θ)``.
    """

    def __init__(
        self,
        alpha: Tensor,
        y: Tensor,
        grad_out: Tensor,
        active: Tensor,
        shared: Tensor,
        inputs: int | None = None,
    ) -> None:
        n = int((~shared).sum()) if inputs is None else int(inputs)
        d = alpha.shape[1]
        self._alpha: Tensor | None = alpha
        self._x = alpha if n == d else alpha[:, :n]
        self._theta = None if n == d else alpha[0, n:] if alpha.shape[0] else alpha.new_zeros(d - n)
        self.y, self.grad_out = y, grad_out
        self._active, self._shared = active, shared
        self.n, self.p = n, d - n
        self._need: tuple[bool, bool] | None = None
        self._parts = False

    @classmethod
    def from_parts(
        cls, x: Tensor, theta: Tensor | None, y: Tensor, grad_out: Tensor, need_x: bool = True, need_theta: bool = True
    ) -> "VJPQuery":
        """The query of a backward pass at inputs ``x`` ``(B, n)`` and parameters ``theta`` ``(p,)`` (or None)."""
        query = cls.__new__(cls)
        query._alpha = None
        query._x, query._theta = x, theta
        query.y, query.grad_out = y, grad_out
        query.n, query.p = x.shape[1], 0 if theta is None else theta.shape[0]
        query._need = (bool(need_x), bool(need_theta) and theta is not None)
        query._active = query._shared = None
        query._parts = True
        return query

    # ------------------------------------------------------------ the layout
    @property
    def x(self) -> Tensor:
        """The inputs ``(B, n)``."""
        return self._x

    @property
    def theta(self) -> Tensor | None:
        """The device parameters ``(p,)``, shared by every row (None: the device has none)."""
        return self._theta

    @property
    def alpha(self) -> Tensor:
        """The rows ``α = (x, θ)`` ``(B, n + p)``, joined on first use."""
        if self._alpha is None:
            self._alpha = join(self._x, self._theta)
        return self._alpha

    @property
    def n_inputs(self) -> int:
        """The number ``n`` of input columns, ahead of θ's ``p`` shared ones."""
        return self.n

    @property
    def batch(self) -> int:
        return self._x.shape[0]

    @property
    def dim(self) -> int:
        return self.n + self.p

    @property
    def dtype(self) -> torch.dtype:
        return self._x.dtype

    @property
    def device(self) -> torch.device:
        return self._x.device

    def _masks(self) -> tuple[Tensor, Tensor]:
        if self._active is None:
            self._active, self._shared = _layout_masks(self.n, self.p, *self._need, self._x.device)
        return self._active, self._shared

    @property
    def active(self) -> Tensor:
        """``(d,)`` bool: the coordinates whose gradient somebody needs."""
        return self._masks()[0]

    @property
    def shared(self) -> Tensor:
        """``(d,)`` bool: the coordinates shared by the whole batch (θ's)."""
        return self._masks()[1]

    @property
    def need_x(self) -> bool:
        if self._need is None:
            self._need = (bool(self._active[: self.n].any()), bool(self._active[self.n :].any()))
        return self._need[0]

    @property
    def need_theta(self) -> bool:
        if self._need is None:
            self.need_x
        return self._need[1]

    @property
    def n_active(self) -> int:
        if self._parts:  # the masks follow from the two needs: no tensor to count
            return self.n * self._need[0] + self.p * self._need[1]
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
        return draw.to(device=self.device, dtype=self._x.real.dtype)

    def active_index(self) -> Tensor:
        return torch.nonzero(self.active).squeeze(1)

    def by_column(self) -> tuple[Tensor, Tensor, Tensor]:
        """The opening of an estimator that works column by column: ``(α, a zero gradient, the active columns)``.

        The gradient ``(B, d)`` is filled in at the active columns and
        returned as it is (its other columns stay zero).
        """
        alpha = self.alpha
        return alpha, torch.zeros_like(alpha), self.active_index()

    # ------------------------------------------------------ probes and answers
    def direction_groups(self, count: int) -> Tensor | None:
        """The θ group of each probe row laid out ``(count, B)`` along :meth:`directions`' draws.

        Row ``(i, b)`` moves θ by draw ``i``'s shared part, the same for every
        ``b``: ``i`` is its group.  None when θ is not moved (no gradient for
        it is needed), so that every row is at the query's own θ.
        """
        if not self.need_theta:
            return None
        return torch.arange(count, device=self.device).repeat_interleave(self.batch)

    def evaluate(self, prober: ProberLike, rows: Tensor, group: Tensor | None = None, differentiable: bool = False) -> Tensor:
        """The device's outputs ``(N, m)`` at probe rows ``α`` ``(N, d)``, counted as probes.

        ``group`` ``(N,)``: rows with the same value share their θ (the
        estimator knows this when it draws them: a shared direction moves θ
        alike for the whole batch); None: one θ for all rows (checked; rows that disagree are grouped by their θ).
        A :class:`GroupedProber` gets the inputs and one θ per group
        (:func:`evaluate_grouped`); any other prober (a function of rows) is
        called with the rows.
        """
        grouped = getattr(prober, "evaluate", None)
        if grouped is None:
            return prober(rows, differentiable=True) if differentiable else prober(rows)
        return evaluate_grouped(grouped, rows, self.n, self._theta, group, differentiable=differentiable)

    def rows(self, grad: "Tensor | VJP") -> Tensor:
        """An answer as ``grad_α`` rows ``(B, d)``: a :class:`VJP`'s θ part spread evenly over the rows.

        For an estimator that works on another's answer row by row
        (:class:`~blackgrad.estimators.Unbiased`); the rows sum to the same θ gradient.
        """
        if isinstance(grad, Tensor):
            return grad
        grad_x, grad_theta = self.gradient(grad)
        x = torch.zeros_like(self._x) if grad_x is None else grad_x
        if self.p == 0:
            return x
        theta = torch.zeros_like(self._theta) if grad_theta is None else grad_theta
        return torch.cat([x, (theta / max(self.batch, 1)).expand(self.batch, -1)], dim=1)

    def gradient(self, grad: "Tensor | VJP") -> tuple[Tensor | None, Tensor | None]:
        """``(grad_x, grad_θ)`` from an estimator's answer; None for a part nobody needs.

        ``grad`` is ``grad_α`` ``(B, d)`` (θ's columns summed over the
        batch here) or a :class:`VJP` of the two parts.
        """
        batch, n, p = self._x.shape[0], self.n, self.p
        need_x, need_theta = self.need_x, self.need_theta
        if type(grad) is VJP or isinstance(grad, VJP):
            grad_x, grad_theta = grad
            if grad_theta is None and not need_theta and type(grad_x) is Tensor and grad_x.shape == self._x.shape:
                return (grad_x if need_x else None), None  # the inputs' part alone, as it is
            for part, value, shape in (("x", grad_x, (batch, n)), ("theta", grad_theta, (p,))):
                if value is not None and (not isinstance(value, Tensor) or tuple(value.shape) != shape):
                    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"VJP.{part} has shape {got}; expected {shape}")
            grad_x = (torch.zeros_like(self._x) if grad_x is None else grad_x) if need_x else None
            if need_theta:
                grad_theta = torch.zeros_like(self._theta) if grad_theta is None else grad_theta
            return grad_x, grad_theta if need_theta else None
        if not isinstance(grad, Tensor) or tuple(grad.shape) != (batch, n + p):
            got = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
            raise ValueError(f"a gradient of shape {got}; expected {(batch, n + p)} (batch, {n} inputs + {p} params)")
        grad_x = (grad if p == 0 else grad[:, :n]) if need_x else None
        grad_theta = grad[:, n:].sum(0) if need_theta else None
        return grad_x, grad_theta


class Estimator(abc.ABC):
    """Base of all gradient estimators; the contract is the module docstring."""

    #: True for estimators that backpropagate through the device itself
    #: (:class:`~blackgrad.estimators.Exact`): a :class:`~blackgrad.BlackBox`
    #: given one is a differentiable box (``differentiable=True``), which keeps
    #: the autograd graph of the forward call instead of probing.
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

    def withholds(self, part: str) -> bool:
        """Whether the last :meth:`vjp` withheld ``part``'s gradient (``"inputs"`` or ``"params"``).

        An estimator whose gate was shut for a part returns zeros there; saying
        so lets the box pass None instead, which an optimiser skips, where a
        zero would still advance its state (Adam's moments and step count).
        """
        return False

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


def _directional_slopes(
    prober: ProberLike,
    points: Tensor,
    directions: Tensor,
    step: float,
    y: Tensor | None,
    query: VJPQuery | None = None,
    group: Tensor | None = None,
) -> Tensor:
    """Measured slopes of the device along ``directions`` at ``points`` (both ``(N, d)``).

    One-sided ``(f(α + hε) − y) / h`` when the outputs ``y`` at ``points`` are
    given (the forward pass already paid for them), central
    ``(f(α + hε) − f(α − hε)) / 2h`` otherwise — in one prober request either
    way.  ``h`` is the step really taken along ``ε`` after rounding; a step too
    small for the dtype to represent raises instead of returning a zero or NaN
    slope.  With the ``query`` the probes go through :meth:`VJPQuery.evaluate`,
    ``group`` saying which rows share their θ (None: all at the query's own).
    Returns ``(N, m)``.
    """
    plus = points + step * directions
    if y is None:
        minus = points - step * directions
        taken = _steps_taken(points, plus, minus)
        rows = torch.cat([plus, minus])
        if query is None:
            f_both = prober(rows)
        else:  # the minus probes of a direction share a θ of their own
            both = None if group is None else torch.cat([group, group + (int(group.max()) + 1)])
            f_both = query.evaluate(prober, rows, both)
        f_plus, f_minus = f_both.reshape(2, points.shape[0], -1)
        difference = f_plus - f_minus
    else:
        taken = _steps_taken(points, plus)
        difference = (prober(plus) if query is None else query.evaluate(prober, plus, group)) - y
    return difference / _taken(taken, directions, step, points)


def _steps_taken(points: Tensor, plus: Tensor, minus: Tensor | None = None) -> Tensor:
    """The displacement really taken between a difference's two evaluations, after rounding.

    ``plus − points`` for a one-sided difference (the other end is the point
    itself), ``(plus − points) + (points − minus)`` for a central one: in
    floating point ``points + h`` is not ``h`` away from ``points``, and a
    difference divided by the step asked for instead of the one taken is off
    by the rounding.  Any shapes that broadcast.
    """
    taken = plus - points
    return taken if minus is None else taken + (points - minus)


def _taken(taken: Tensor, directions: Tensor, step: float, points: Tensor) -> Tensor:
    """The length of the step really taken along each direction after rounding, ``(N, 1)``.

    ``taken`` is the whole displacement between the two evaluations of each
    row; its projection on the direction is the length the difference is
    divided by.  A step too small for the dtype raises rather than giving a
    zero or NaN slope.
    """
    norm = directions.pow(2).sum(1)
    length = (taken * directions).sum(1) / norm.clamp(min=torch.finfo(norm.dtype).tiny)
    if bool(((length == 0) & (norm > 0)).any()):
        raise ValueError(
            f"a probe step of {step:g} vanishes in {points.dtype} at these inputs (|α| up to "
            f"{points.abs().max().item():.3g}); pass a larger step="
        )
    return length.clamp(min=torch.finfo(norm.dtype).tiny).unsqueeze(1)

