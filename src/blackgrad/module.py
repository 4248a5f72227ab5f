"""``BlackBox``: an ``nn.Module`` around a device whose backward an estimator supplies."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .calibration import DeviceProfile, calibrate as measure_profile, calibration_cost
from .errors import InputShapeError
from .estimators.base import Estimator, VJPQuery
from .estimators.exact import require_graph
from .estimators.learned import LearnedEstimator
from .estimators.learned_jacobian import LearnedJacobian
from .function import first_order_only
from .prober import Ledger, Prober, RetryPolicy, all_finite


def default_estimator(seed: int | None = 0) -> Estimator:
    """The estimator a :class:`BlackBox` uses when given none: ``LearnedJacobian(seed=seed)``.

    A box built without an estimator passes a seed drawn from torch's global
    generator, as ``nn.Linear`` draws its initial weights: a run repeats under
    ``torch.manual_seed``, and two boxes of one model probe along directions
    of their own instead of the same ones.

    With its defaults that is a :class:`~blackgrad.estimators.DigitalTwin`
    fitted to every forward batch (free) and one probe slope per sample (one
    evaluation), plus a learned Jacobian correction trained on what the
    twin's slopes leave unexplained; it probes with the calibrated step and
    withholds its gradient while its fidelity is low.  In the benchmark's
    defaults section (``blackgrad bench --section defaults``: every
    estimator's defaults on seven tasks, one seed) it reached 0.838–0.998 of
    exact backprop's accuracy at 2 evaluations per sample and layer, the
    highest on average and at worst; the twin alone ranged 0.763–0.995
    (BENCHMARKS.md).
    """
    return LearnedJacobian(seed=seed)


class _BlackBoxFunction(torch.autograd.Function):
    """Forward: the real device, through the prober.  Backward: the estimator.

    Written in the classic style (``forward(ctx, ...)``): torch binds the
    arguments of a ``setup_context``-style function to its signature with
    ``inspect`` on every call, which costs as much as a cheap device.  Under
    a ``torch.func`` transform, which needs ``setup_context``,
    :class:`_TransformableBlackBoxFunction` runs instead (see :func:`_apply`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, theta: Tensor | None, box: "BlackBox") -> Tensor:
        y = box.prober.forward(x, theta)
        _save(ctx, x, theta, box, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        return _backward(ctx, grad_y)


class _TransformableBlackBoxFunction(torch.autograd.Function):
    """:class:`_BlackBoxFunction` in the ``setup_context`` style that ``torch.func`` transforms require."""

    @staticmethod
    def forward(x: Tensor, theta: Tensor | None, box: "BlackBox") -> Tensor:
        return box.prober.forward(x, theta)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _save(ctx, *inputs, output)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        return _backward(ctx, grad_y)


# torch's own test of whether a torch.func transform is running (absent: always take the transformable path)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _apply(x: Tensor, theta: Tensor | None, box: "BlackBox") -> Tensor:
    """The device's output at ``x`` (and ``theta``) with the estimator as its backward."""
    if _transforms_active is None or _transforms_active():
        return _TransformableBlackBoxFunction.apply(x, theta, box)
    return _BlackBoxFunction.apply(x, theta, box)


def _save(ctx: Any, x: Tensor, theta: Tensor | None, box: "BlackBox", output: Tensor) -> None:
    ctx.box = box
    ctx.has_theta = theta is not None
    ctx.save_for_backward(x, output, *((theta,) if theta is not None else ()))


def _backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    x, y, *rest = ctx.saved_tensors
    theta = rest[0] if ctx.has_theta else None
    need_x, need_theta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    with torch.no_grad():
        grad_x, grad_theta = ctx.box._estimate(x, theta, y, grad_y, need_x, need_theta)
    if torch.is_grad_enabled():
        # create_graph=True: this gradient may be differentiated again, and an estimate has no
        # derivative to give (it depends on x through J(x), unknown).  Dropping that term would
        # be a silently wrong second derivative: the gradients refuse to be differentiated.
        box = ctx.box
        message = (
            f"a second derivative through black box {box.name!r} was asked for (a gradient computed with "
            f"create_graph=True was differentiated again), but its estimator {type(box.estimator).__name__} "
            "gives first-order gradients only: an estimated vector-Jacobian product has no derivative to give. "
            "Use the Exact() estimator if the device is differentiable torch code, or compute the first "
            "gradient with create_graph=False"
        )
        sources = (x, theta, grad_y)
        grad_x, grad_theta = (None if g is None else first_order_only(g, message, *sources) for g in (grad_x, grad_theta))
    return grad_x, grad_theta, None


class _RealView:
    """The prober of a complex black box as an estimator sees it: real rows.

    A complex coordinate ``z = a + ib`` is the real pair ``(a, b)``
    (interleaved, ``torch.view_as_real``), a complex output likewise.  The
    real VJP of that real map, with the real pair ``(Re g, Im g)`` of the
    incoming gradient, is ``(∂L/∂a, ∂L/∂b)``, and ``∂L/∂a + i ∂L/∂b`` is the
    gradient torch's own autograd gives a complex input (the conjugate
    Wirtinger convention), for holomorphic and non-holomorphic maps alike.
    """

    def __init__(self, prober: Prober) -> None:
        self.prober = prober
        self.name = prober.name

    def __call__(self, rows: Tensor, differentiable: bool = False, kind: str = "probe") -> Tensor:
        alpha = torch.view_as_complex(rows.reshape(rows.shape[0], -1, 2).contiguous())
        return _as_real(self.prober(alpha, differentiable=differentiable, kind=kind))


def _as_real(t: Tensor) -> Tensor:
    """Rows ``(N, k)`` of a complex tensor as real rows ``(N, 2k)`` (re, im interleaved); a real one as is."""
    return torch.view_as_real(t.resolve_conj()).reshape(t.shape[0], -1) if t.is_complex() else t


class BlackBox(nn.Module):
    """A black box inside a PyTorch model: the device runs forward, an estimator backward.

    Args:
        fun: the device.  ``fun(x)`` — or ``fun(x, theta)`` when ``params`` is
            given — takes a batch ``x`` of shape ``(B, *in_shape)`` and returns
            ``(B, *out_shape)``.  It may be numpy code (see ``numpy``), slow,
            noisy, non-differentiable, or talk to an instrument; returned
            arrays are converted to tensors with the dtype and device of ``x``.
        estimator: the :class:`~blackgrad.estimators.Estimator` supplying the
            backward pass (default :func:`default_estimator`: a learned
            Jacobian on top of an online digital twin, fitted to the forward
            values and one probe slope per sample, seeded from torch's global
            generator so that each box has a random stream of its own).
        params: initial device parameters θ (e.g. a phase mask), flattened to
            ``(p,)`` and trained like any ``nn.Parameter``; their gradient is
            summed over the batch.  ``None``: the device has no trainable knobs.
        in_shape: shape of one input sample; taken from the first batch if None.
        out_shape: shape of one output sample; taken from the first result if None.
        max_batch: the most samples sent to the device in one call (probes of
            a backward pass are packed into as few calls as this allows).
        retries: how often a device call that raised, timed out (or returned
            NaN/Inf) is repeated before the error is raised; or a full
            :class:`RetryPolicy`.
        budget: the most device evaluations allowed in total, calibration's
            included (272 by default, needed whole on the first training
            batch); it is never exceeded.  Each request — a calibration, a
            forward batch together with the probes of its backward pass, a
            backward pass — is checked before its first evaluation against
            the most it can spend, every retry the policy allows included
            (``N·(1 + retries)``), and refused with
            :class:`~blackgrad.errors.BudgetExhausted` if that might not fit;
            a refused request evaluates nothing and changes no state
            (ledger, estimator, generators).  Raise ``layer.budget`` and redo
            the step to go on.  A forward that needs no gradient reserves
            nothing (run it under ``torch.no_grad()``); a box called several
            times before one backward pass checks each call with its own
            backward, and each backward is checked again before its first
            probe.
        timeout: seconds one device call may take (None, the default: no
            limit).  A call that takes longer is abandoned — counted as
            failed, retried under ``retries``, and finally raised as
            :class:`~blackgrad.errors.DeviceTimeout`.  The device then runs
            in a worker thread; a hung Python call cannot be killed, only
            abandoned, and whatever it returns later is discarded and never
            counted (see :class:`RetryPolicy`).
        numpy: call ``fun`` with numpy arrays instead of tensors.
        name: how errors and reports name the device.
        calibrate: ``True`` (default): on the first training batch that needs
            a gradient, measure the device (:func:`~blackgrad.calibrate`, a
            few hundred evaluations counted as ``calibration``) and hand the
            profile to the estimator, which probes with its step unless told
            one — only if the estimator wants a profile (``needs_profile``).
            ``False``: never.  A :class:`~blackgrad.DeviceProfile`: use it.
        record: a path or a :class:`~blackgrad.recording.Recorder`: every
            device evaluation (forward, probe and calibration; its inputs
            ``α = (x, θ)``, outputs, time and call) is appended to that HDF5
            file and flushed before it is used, so that a crash loses at most
            the call in flight (needs ``blackgrad[record]``).  Read it back
            with :class:`~blackgrad.recording.Recording`.

    The ledger ``layer.calls`` counts every sample the device evaluated:
    ``forward``, ``probe``, ``failed``, ``total``, ``device_calls`` and
    ``seconds``; ``layer.calls.reset()`` starts it again.  A sample handed
    to the device counts once whatever became of its call (``failed`` when
    it raised, timed out or was interrupted): the ledger is device time paid.

    Complex inputs are supported by every probing and learned estimator: it
    sees each complex number as its real and imaginary parts (twice the
    coordinates, so twice the probes of finite differences), and the
    gradient follows torch's convention for complex autograd.  A gradient
    of the black box is first-order only: differentiating it again (after
    ``create_graph=True``) raises, except with ``Exact``.

    In training mode every forward batch is offered to the estimator
    (``observe``), so learned estimators learn from it at no device cost —
    under ``torch.no_grad()`` and ``torch.inference_mode()`` too (an
    inference-mode batch is handed over as ordinary tensors, which the
    estimator can train on later).

    Example::

        layer = BlackBox(my_numpy_device, SPSA(directions=4), numpy=True)
        y = layer(x)                # runs the device
        loss(y).backward()          # SPSA probes the device, 8 evaluations per sample
        print(layer.calls)          # Ledger(forward=B, probe=8B, ...)
    """

    def __init__(
        self,
        fun: Callable[..., Any],
        estimator: Estimator | None = None,
        params: Tensor | None = None,
        *,
        in_shape: tuple[int, ...] | None = None,
        out_shape: tuple[int, ...] | None = None,
        max_batch: int | None = None,
        retries: int | RetryPolicy = 0,
        budget: int | None = None,
        timeout: float | None = None,
        numpy: bool = False,
        name: str | None = None,
        calibrate: bool | DeviceProfile = True,
        record: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(calibrate, (bool, DeviceProfile)):
            raise TypeError(f"calibrate must be True, False or a DeviceProfile, got {calibrate!r}")
        if not callable(fun):
            raise TypeError(f"BlackBox needs a callable device, got {type(fun).__name__}")
        if estimator is None:
            estimator = default_estimator(seed=int(torch.randint(0, 2**31 - 1, (1,))))
        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"estimator must be a blackgrad.estimators.Estimator instance such as FiniteDifference() "
                f"or SPSA(directions=4), got {estimator!r}"
            )
        # A plain attribute, never a submodule: a learned estimator's own parameters
        # must not be trained by the user's optimiser on the task loss (nor moved by
        # ``.to()``: a learned model lives on the device of the data it first sees).
        self.estimator = estimator
        if params is not None:
            if not isinstance(params, Tensor):
                raise TypeError(f"params must be a tensor, got {type(params).__name__}")
            if isinstance(params, nn.Parameter) and params.dim() != 1:
                # a flattened copy would be a new parameter: the caller's optimiser would never train it
                raise ValueError(
                    f"params as an nn.Parameter must be 1-D (p,), got shape {tuple(params.shape)}; "
                    "pass a plain tensor to have BlackBox make its own flat parameter, or flatten yours"
                )
            self.params = params if isinstance(params, nn.Parameter) else nn.Parameter(params.detach().reshape(-1).clone())
        else:
            self.register_parameter("params", None)
        self.fun = fun
        self.name = name or getattr(fun, "name", None) or getattr(fun, "__name__", None) or type(fun).__name__
        self._in_shape = None if in_shape is None else tuple(in_shape)
        self._out_shape = None if out_shape is None else tuple(out_shape)
        retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        if timeout is not None:
            if retry.timeout is not None and retry.timeout != timeout:
                raise ValueError(
                    f"timeout={timeout!r} contradicts the retry policy's timeout={retry.timeout!r}; give one of them"
                )
            retry = dataclasses.replace(retry, timeout=timeout)  # validates it
        self._prober_options = dict(
            max_batch=max_batch,
            retry=retry,
            budget=budget,
            numpy=numpy,
            name=self.name,
        )
        self.prober: Prober | None = None
        self.recorder = _recorder(record)
        self._ledger = Ledger()
        self._mask_cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}
        self._calibrate = calibrate is True
        self.profile: DeviceProfile | None = calibrate if isinstance(calibrate, DeviceProfile) else None
        if self.profile is not None:
            self.estimator.calibrate(self.profile)
        if self._in_shape is not None:
            self._make_prober(self._in_shape)

    # ----------------------------------------------------------------- public
    @property
    def calls(self) -> Ledger:
        """The evaluation ledger (see :class:`~blackgrad.prober.Ledger`)."""
        return self._ledger

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        return self._in_shape

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return None if self.prober is None else self.prober.out_shape

    @property
    def budget(self) -> int | None:
        return self._prober_options["budget"]

    @budget.setter
    def budget(self, value: int | None) -> None:
        self._prober_options["budget"] = value
        if self.prober is not None:
            self.prober.budget = value

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"BlackBox {self.name!r} takes a tensor batch, got {type(x).__name__}")
        if x.dim() == 0:
            raise InputShapeError(f"BlackBox {self.name!r} takes a batch (B, *in_shape); got a scalar")
        if x.dim() == 1 and self._in_shape != ():
            # one sample of shape (n,) and a batch of n scalars look alike: make the caller say which
            raise InputShapeError(
                f"BlackBox {self.name!r} takes a batch (B, *in_shape); got shape {tuple(x.shape)}: for one "
                "sample use x.unsqueeze(0), for a batch of scalars give in_shape=()"
            )
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"BlackBox {self.name!r} takes a floating-point batch, got {x.dtype}")
        if self.prober is None:
            self._in_shape = tuple(x.shape[1:])
            self._make_prober(self._in_shape)
        if tuple(x.shape[1:]) != self._in_shape:
            raise InputShapeError(
                f"BlackBox {self.name!r} expects inputs of shape (B, {', '.join(map(str, self._in_shape))}); "
                f"got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        # rows as they are when already flat: a reshape would add a node to every backward pass
        flat = x if x.dim() == 2 else x.reshape(batch, self.prober.n_x)
        theta = self.params
        if theta is not None and theta.dtype != flat.dtype:
            theta = theta.to(flat.dtype)
        wants_gradient = torch.is_grad_enabled() and (flat.requires_grad or (theta is not None and theta.requires_grad))
        if wants_gradient and flat.dtype in (torch.float16, torch.bfloat16) and self._estimate_needs_precision:
            # a difference of two half-precision readings is mostly rounding: refuse before spending anything
            raise TypeError(
                f"BlackBox {self.name!r}: {type(self.estimator).__name__} estimates gradients from differences "
                f"and learned models, which {flat.dtype} is too coarse for; cast the input to float32 (x.float())"
            )
        if wants_gradient and x.is_complex() and not self.estimator.supports_complex:
            raise TypeError(
                f"BlackBox {self.name!r}: {type(self.estimator).__name__} cannot estimate gradients for complex "
                f"inputs ({x.dtype}); use FiniteDifference(), SPSA(), LeastSquares(), a learned estimator, or "
                "Exact() for differentiable torch code"
            )
        calibrating = (
            self.training
            and wants_gradient
            and self._calibrate
            and self.profile is None
            and self.estimator.needs_profile
            and x.shape[0] > 0
            and not x.is_complex()  # calibration measures real devices; complex ones keep their steps
        )
        # The whole step must fit before anything is spent: calibration, this forward batch and
        # the probes its backward pass will ask for (a backward refused half-way through a
        # step would leave the layers after the box with gradients, those before without).
        backward = 0
        if wants_gradient and self.prober.budget is not None and not self.estimator.differentiates_device:
            need_theta = theta is not None and theta.requires_grad
            backward = self._backward_cost(batch, flat.requires_grad, need_theta, x.is_complex())
        if calibrating:
            cost = calibration_cost(min(8, batch), 8, 2)  # calibrate()'s defaults, as called below
            self.prober.check_budget(cost, "calibration", after=batch + backward, after_what="the step it belongs to")
            self.calibrate(x)
        self.prober.check_budget(batch, "forward", after=backward, after_what="its backward pass")
        if self.estimator.differentiates_device:
            y = self.prober.forward(flat, theta, differentiable=True)
            if batch == 0:  # nothing was evaluated, so nothing carries a graph: zero gradients, as elsewhere
                y = y + 0 * (flat.sum() + (0 if theta is None else theta.sum()))
            elif wants_gradient:
                require_graph(y, self.name)
        else:
            y = _apply(flat, theta, self)
        if self.training:
            self._observe(flat.detach(), None if theta is None else theta.detach(), y.detach())
        out_shape = self.prober.out_shape
        return y if len(out_shape) == 1 else y.reshape((batch,) + out_shape)

    def calibrate(self, x: Tensor, **options: Any) -> DeviceProfile:
        """Measure the device at inputs ``x`` (and the current θ) and hand the profile to the estimator.

        ``options`` go to :func:`~blackgrad.calibrate`.  The evaluations are
        counted as ``calibration`` and respect the budget.  Returns the
        profile, also kept as ``self.profile`` (and in ``state_dict``).
        """
        if self.prober is None:
            self._in_shape = tuple(x.shape[1:])
            self._make_prober(self._in_shape)
        flat = x.detach().reshape(x.shape[0], self.prober.n_x)
        theta = None if self.params is None else self.params.detach().to(flat.dtype)
        profile = measure_profile(self.prober, flat, theta, **options)
        self.profile = profile
        self.estimator.calibrate(profile)
        return profile

    @property
    def fidelity(self):
        """The estimator's running :class:`~blackgrad.estimators.fidelity.Fidelity` (None if it keeps none)."""
        return getattr(self.estimator, "fidelity", None)

    def pretrain(self, x: Tensor, epochs: int = 50, progress: bool = False) -> list[float]:
        """Pre-fit the estimator's model on the device's outputs at inputs ``x``.

        For estimators with a ``fit`` method (:class:`~blackgrad.estimators.DigitalTwin`):
        spends one probe evaluation per row of ``x`` (at the current θ), then
        trains for ``epochs``.  Returns the training loss per epoch.
        """
        fit = getattr(self.estimator, "fit", None)
        if fit is None:
            raise TypeError(f"{type(self.estimator).__name__} cannot be pre-trained; DigitalTwin can")
        if self.prober is None:
            self._in_shape = tuple(x.shape[1:])
            self._make_prober(self._in_shape)
        flat = x.detach().reshape(x.shape[0], self.prober.n_x)
        theta = None if self.params is None else self.params.detach().to(flat.dtype)
        alpha = self._alpha(flat, theta)
        if alpha.is_complex():  # the estimator sees a complex device as a real one (see _RealView)
            return fit(_RealView(self.prober), _as_real(alpha), epochs=epochs, progress=progress)
        return fit(self.prober, alpha, epochs=epochs, progress=progress)

    def extra_repr(self) -> str:
        p = 0 if self.params is None else self.params.numel()
        return f"name={self.name!r}, in_shape={self._in_shape}, out_shape={self.out_shape}, params={p}, estimator={self.estimator!r}"

    # ---------------------------------------------------- checkpoint support
    def get_extra_state(self) -> dict[str, Any]:
        """Estimator state, shapes, ledger and calibration profile travel with ``model.state_dict()``.

        The device's own state is not part of it: a physical device has none
        to save, and a simulated one (its noise generator, say) has its own
        ``state_dict()``, which :class:`~blackgrad.Checkpoint` saves beside
        the model's.  Settings given to the constructor (``budget``,
        ``retries``, ``timeout``) are not state: the run that loads this
        builds its box with them.
        """
        return {
            "estimator": self.estimator.state_dict(),
            "in_shape": self._in_shape,
            "out_shape": self.out_shape,
            "ledger": self._ledger.as_dict(),
            "profile": None if self.profile is None else self.profile.state_dict(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self._ledger.load_dict(state["ledger"])
        # the checkpoint's profile wins; one without (saved before calibrating, or by a box that
        # never calibrates) leaves this box's own, e.g. a profile given to the constructor
        if state.get("profile") is not None:
            self.profile = DeviceProfile.from_state_dict(state["profile"])
        self.estimator.calibrate(self.profile)
        if state["in_shape"] is not None:
            self._in_shape = tuple(state["in_shape"])
            self._make_prober(self._in_shape)
            if state["out_shape"] is not None:
                self.prober.out_shape = tuple(state["out_shape"])

    # --------------------------------------------------------------- internal
    @property
    def _estimate_needs_precision(self) -> bool:
        """Whether the estimator differences device readings or trains a model (not Exact or a surrogate)."""
        return self.estimator.probe_cost(1, 1, 64) > 0 or isinstance(self.estimator, LearnedEstimator)

    def _make_prober(self, in_shape: tuple[int, ...]) -> None:
        p = 0 if self.params is None else self.params.numel()
        self.prober = Prober(self.fun, in_shape, n_params=p, out_shape=self._out_shape, **self._prober_options)
        self.prober.ledger = self._ledger
        self.prober.recorder = self.recorder

    def _alpha(self, x: Tensor, theta: Tensor | None) -> Tensor:
        if theta is None:
            return x
        return torch.cat([x, theta.expand(x.shape[0], -1)], dim=1)

    def _masks(self, n: int, p: int, need_x: bool, need_theta: bool, device: torch.device) -> tuple[Tensor, Tensor]:
        """The ``active`` and ``shared`` masks of a query over ``n`` input and ``p`` parameter columns.

        Made once per layout and kept: building them from Python lists on
        every backward pass cost more than a cheap device's own backward.
        """
        key = (n, p, need_x, need_theta, device)
        masks = self._mask_cache.get(key)
        if masks is None:
            active = torch.tensor([need_x] * n + [need_theta] * p, device=device)
            shared = torch.tensor([False] * n + [True] * p, device=device)
            masks = self._mask_cache[key] = (active, shared)
        return masks

    def _backward_cost(self, batch: int, need_x: bool, need_theta: bool, complex_: bool) -> int:
        """Probe evaluations the backward pass of a batch spends (``Estimator.probe_cost``)."""
        if batch == 0:
            return 0
        n, p = self.prober.n_x, 0 if self.params is None else self.params.numel()
        m = 1 if self.prober.out_shape is None else math.prod(self.prober.out_shape)
        factor = 2 if complex_ else 1  # a complex coordinate is two real ones to the estimator
        return self.estimator.probe_cost(factor * (n * need_x + p * need_theta), factor * m, batch)

    def _observe(self, x: Tensor, theta: Tensor | None, y: Tensor) -> None:
        """Offer a forward batch to the estimator, as real rows for a complex device."""
        alpha, y = _as_real(self._alpha(x, theta)), _as_real(y)
        if torch.is_inference_mode_enabled():
            # Tensors made in inference mode can never join autograd later, and a learned
            # estimator trains on what it stores: hand it ordinary copies, outside inference mode.
            with torch.inference_mode(False):
                self.estimator.observe(alpha.clone(), y.clone())
            return
        self.estimator.observe(alpha, y)

    def _estimate(
        self, x: Tensor, theta: Tensor | None, y: Tensor, grad_y: Tensor, need_x: bool, need_theta: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        n, p = x.shape[1], 0 if theta is None else theta.numel()
        if x.shape[0] == 0:  # an empty batch: nothing to estimate, nothing to spend
            return (torch.zeros_like(x) if need_x else None), (torch.zeros_like(theta) if need_theta else None)
        # Refused here, before the estimator draws a direction or spends an inner probe: a refused
        # backward leaves every estimator state (generators, buffers, fidelity) as it was.
        if self.prober.budget is not None:
            self.prober.check_budget(self._backward_cost(x.shape[0], need_x, need_theta, x.is_complex()), "backward")
        complex_ = x.is_complex()
        width = 2 if complex_ else 1  # real coordinates per coordinate of α
        active, shared = self._masks(n * width, p * width, need_x, need_theta, x.device)
        alpha = _as_real(self._alpha(x, theta))
        query = VJPQuery(
            alpha=alpha, y=_as_real(y), grad_out=_as_real(grad_y), active=active, shared=shared, inputs=n * width
        )
        grad = self.estimator.vjp(_RealView(self.prober) if complex_ else self.prober, query)
        if not isinstance(grad, Tensor) or grad.shape != query.alpha.shape:
            shape = tuple(grad.shape) if isinstance(grad, Tensor) else type(grad).__name__
            raise RuntimeError(
                f"estimator {self.estimator!r} returned a gradient of shape {shape}; "
                f"expected {tuple(query.alpha.shape)} (batch, {n * width} inputs + {p * width} params)"
            )
        # the active columns only, as a view: x's first, θ's last
        checked = grad if p == 0 or (need_x and need_theta) else grad[:, : n * width] if need_x else grad[:, n * width :]
        if not all_finite(checked):
            raise FloatingPointError(
                f"estimator {self.estimator!r} returned NaN or Inf gradients for black box {self.name!r}"
            )
        if complex_:
            grad = torch.view_as_complex(grad.reshape(grad.shape[0], -1, 2).contiguous())
        grad_x = None if not need_x else (grad if p == 0 else grad[:, :n]).to(x.dtype)
        grad_theta = grad[:, n:].sum(0) if need_theta else None
        return grad_x, grad_theta


def _recorder(record: Any) -> Any:
    """``record=`` as a :class:`~blackgrad.recording.Recorder` (or None)."""
    if record is None:
        return None
    from .recording import Recorder

    if isinstance(record, Recorder):
        return record
    if isinstance(record, (str, os.PathLike)):
        return Recorder.shared(record)  # boxes given one path share its recorder
    raise TypeError(f"record must be a path or a blackgrad.recording.Recorder, got {type(record).__name__}")
