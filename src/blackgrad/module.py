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
from .estimators.base import Estimator, VJPQuery, join
from .estimators.exact import Exact, require_graph
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
    twin's slopes leave unexplained and passed in the share that fits the
    probe rows it had not trained on; the twin weighs slopes that are mostly
    noise less than its values; it probes with the calibrated step and
    withholds its gradient while its fidelity is low; it takes four times
    its updates in its first 40 backward passes.  In the benchmark's
    defaults section (``blackgrad bench --section defaults``: every
    estimator's defaults on seven tasks) it reached 0.956–1.018 of exact
    backprop's accuracy at 2 evaluations per sample and layer on the six
    single-device tasks over three seeds, and 0.392–1.043 (mean 0.840)
    through three devices in series over twelve seeds (BENCHMARKS.md).
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
    need_x, need_theta, _ = ctx.needs_input_grad
    if not torch.is_grad_enabled():  # the usual backward: autograd already records nothing
        return (*ctx.box._estimate(x, theta, y, grad_y, need_x, need_theta), None)
    with torch.no_grad():
        grad_x, grad_theta = ctx.box._estimate(x, theta, y, grad_y, need_x, need_theta)
    # create_graph=True: this gradient may be differentiated again, and an estimate has no
    # derivative to give (it depends on x through J(x), unknown).  Dropping that term would
    # be a silently wrong second derivative: the gradients refuse to be differentiated.
    box = ctx.box
    message = (
        f"a second derivative through black box {box.name!r} was asked for (a gradient computed with "
        f"create_graph=True was differentiated again), but its estimator {type(box.estimator).__name__} "
        "gives first-order gradients only: an estimated vector-Jacobian product has no derivative to give. "
        "Use the Exact() estimator (BlackBox(..., differentiable=True)) if the device is differentiable torch code, or compute the first "
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

    def evaluate(
        self, x: Tensor, theta: Tensor | None = None, group: Tensor | None = None, kind: str = "probe", differentiable: bool = False
    ) -> Tensor:
        """:meth:`Prober.evaluate` on real pairs: inputs ``(N, 2n)``, θ ``(2p,)`` or ``(G, 2p)``."""
        x = torch.view_as_complex(x.reshape(x.shape[0], -1, 2).contiguous())
        if theta is not None:
            theta = torch.view_as_complex(theta.reshape(theta.shape[:-1] + (-1, 2)).contiguous())
        return _as_real(self.prober.evaluate(x, theta, group, kind=kind, differentiable=differentiable))


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
        differentiable: ``True``: the device is differentiable torch code, and
            torch differentiates it: the forward call keeps its autograd
            graph, the backward pass is exact backprop through it (no probe
            evaluations; second derivatives too), and no estimator is used
            (give none).  ``BlackBox(fun, Exact())`` is the same box: the
            reference the estimators are measured against; ``box.differentiable``
            says which kind a box is.
        copy_inputs: ``True`` (default): a torch device is handed copies of
            its inputs, so that one that edits them in place cannot change
            the model's activations, parameters or an estimator's probes.
            On CPU the copy is copy-on-write: memory is copied only if the
            device writes to its input, so a device that only reads it
            costs no copy.  ``False``: the device promises not to edit its
            inputs, and is handed them themselves — no copy on other devices
            (CUDA), where the copy is made at once —
            while θ is still copied, so the model's
            parameters stay out of its reach whatever it does; a broken
            promise is caught after the call by the tensor's version counter
            and raised as :class:`~blackgrad.errors.DeviceError` (the inputs
            are changed by then).  A device that returns its input as it is
            (an identity) then returns the model's own tensor: its output
            shares memory with the batch.  Numpy devices always get copies,
            and so does a device with a ``timeout`` (an abandoned call may
            edit its input after every check is over).
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
        copy_inputs: bool = True,
        differentiable: bool = False,
        name: str | None = None,
        calibrate: bool | DeviceProfile = True,
        record: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(calibrate, (bool, DeviceProfile)):
            raise TypeError(f"calibrate must be True, False or a DeviceProfile, got {calibrate!r}")
        if not callable(fun):
            raise TypeError(f"BlackBox needs a callable device, got {type(fun).__name__}")
        if not isinstance(differentiable, bool):
            raise TypeError(f"differentiable must be True or False, got {differentiable!r}")
        if estimator is not None and not isinstance(estimator, Estimator):
            raise TypeError(
                f"estimator must be a blackgrad.estimators.Estimator instance such as FiniteDifference() "
                f"or SPSA(directions=4), got {estimator!r}"
            )
        if differentiable and estimator is not None and not estimator.differentiates_device:
            raise ValueError(
                f"differentiable=True has torch differentiate the device itself, so it takes no estimator; "
                f"got {estimator!r} (leave estimator out, or give differentiable=False to estimate)"
            )
        if estimator is None:
            estimator = Exact() if differentiable else default_estimator(seed=int(torch.randint(0, 2**31 - 1, (1,))))
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
        # The prober owns the ledger and the budget (the box only shows them); it learns
        # the input shape from the first batch when none is given.
        self.prober = Prober(
            fun,
            self._in_shape,
            n_params=0 if self.params is None else self.params.numel(),
            out_shape=self._out_shape,
            max_batch=max_batch,
            retry=retry,
            budget=budget,
            numpy=numpy,
            name=self.name,
            copy_inputs=copy_inputs,
        )
        self.recorder = self.prober.recorder = _recorder(record)
        self._calibrate = calibrate is True
        self.profile: DeviceProfile | None = calibrate if isinstance(calibrate, DeviceProfile) else None
        if self.profile is not None:
            self.estimator.calibrate(self.profile)

    # ----------------------------------------------------------------- public
    @property
    def calls(self) -> Ledger:
        """The evaluation ledger (see :class:`~blackgrad.prober.Ledger`)."""
        return self.prober.ledger

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        return self._in_shape

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return self.prober.out_shape

    @property
    def budget(self) -> int | None:
        """The most device evaluations allowed in total (the prober's; None: no limit)."""
        return self.prober.budget

    @budget.setter
    def budget(self, value: int | None) -> None:
        self.prober.budget = value

    def forward(self, x: Tensor) -> Tensor:
        # The hot path: at a cheap device every Python operation here costs about as much as
        # the device's own work on a wide batch (BENCHMARKS.md, "What BlackBox costs around a
        # cheap device"), so the usual case — a floating batch of the known shape — is checked
        # in as few of them as the checks allow, and the rarer ones wait behind a cheap test.
        if not isinstance(x, Tensor):
            raise TypeError(f"BlackBox {self.name!r} takes a tensor batch, got {type(x).__name__}")
        complex_ = x.is_complex()
        if not (complex_ or x.is_floating_point()):
            raise TypeError(f"BlackBox {self.name!r} takes a floating-point batch, got {x.dtype}")
        dim = x.dim()
        if dim == 0 or x.shape[1:] != self._in_shape:
            self._check_batch_shape(x)  # raises, or learns the sample shape from a first batch
        batch = x.shape[0]
        prober, estimator = self.prober, self.estimator
        # rows as they are when already flat: a reshape would add a node to every backward pass
        flat = x if dim == 2 else x.reshape(batch, prober.n_x)
        theta = self.params
        if theta is not None and theta.dtype != flat.dtype:
            theta = theta.to(flat.dtype)
        wants_gradient = torch.is_grad_enabled() and (flat.requires_grad or (theta is not None and theta.requires_grad))
        if wants_gradient and flat.dtype in (torch.float16, torch.bfloat16) and self._estimates_from_readings:
            # a difference of two half-precision readings is mostly rounding: refuse before spending anything
            raise TypeError(
                f"BlackBox {self.name!r}: {type(estimator).__name__} estimates gradients from differences "
                f"and learned models, which {flat.dtype} is too coarse for; cast the input to float32 (x.float())"
            )
        if wants_gradient and complex_ and not estimator.supports_complex:
            raise TypeError(
                f"BlackBox {self.name!r}: {type(estimator).__name__} cannot estimate gradients for complex "
                f"inputs ({x.dtype}); use FiniteDifference(), SPSA(), LeastSquares(), a learned estimator, or "
                "Exact() for differentiable torch code"
            )
        calibrating = (
            self.training
            and wants_gradient
            and self._calibrate
            and self.profile is None
            and estimator.needs_profile
            and batch > 0
            and not complex_  # calibration measures real devices; complex ones keep their steps
        )
        # The whole step must fit before anything is spent: calibration, this forward batch and
        # the probes its backward pass will ask for (a backward refused half-way through a
        # step would leave the layers after the box with gradients, those before without).
        backward = 0
        if wants_gradient and prober.budget is not None and not self.differentiable:
            need_theta = theta is not None and theta.requires_grad
            backward = self._backward_cost(batch, flat.requires_grad, need_theta, complex_)
        if calibrating:
            cost = calibration_cost(min(8, batch), 8, 2)  # calibrate()'s defaults, as called below
            prober.check_budget(cost, "calibration", after=batch + backward, after_what="the step it belongs to")
            self.calibrate(x)
        if prober.budget is not None:
            prober.check_budget(batch, "forward", after=backward, after_what="its backward pass")
        if self.differentiable:
            y = prober.forward(flat, theta, differentiable=True)
            if batch == 0:  # nothing was evaluated, so nothing carries a graph: zero gradients, as elsewhere
                y = y + 0 * (flat.sum() + (0 if theta is None else theta.sum()))
            elif wants_gradient:
                require_graph(y, self.name)
        else:
            y = _apply(flat, theta, self)
        # offered only to an estimator that learns from forward batches (the base ignores them)
        if self.training and type(estimator).observe is not Estimator.observe:
            self._observe(flat.detach(), None if theta is None else theta.detach(), y.detach())
        out_shape = prober.out_shape
        return y if len(out_shape) == 1 else y.reshape((batch,) + out_shape)

    def _check_batch_shape(self, x: Tensor) -> None:
        """Raise for a batch whose shape does not fit; learn the sample shape from a first one."""
        dim = x.dim()
        if dim == 0:
            raise InputShapeError(f"BlackBox {self.name!r} takes a batch (B, *in_shape); got a scalar")
        if dim == 1 and self._in_shape != ():
            # one sample of shape (n,) and a batch of n scalars look alike: make the caller say which
            raise InputShapeError(
                f"BlackBox {self.name!r} takes a batch (B, *in_shape); got shape {tuple(x.shape)}: for one "
                "sample use x.unsqueeze(0), for a batch of scalars give in_shape=()"
            )
        if self._in_shape is None:
            self._shape_inputs(tuple(x.shape[1:]))
        if x.shape[1:] != self._in_shape:
            raise InputShapeError(
                f"BlackBox {self.name!r} expects inputs of shape (B, {', '.join(map(str, self._in_shape))}); "
                f"got {tuple(x.shape)}"
            )

    def calibrate(self, x: Tensor, **options: Any) -> DeviceProfile:
        """Measure the device at inputs ``x`` (and the current θ) and hand the profile to the estimator.

        ``options`` go to :func:`~blackgrad.calibrate`.  The evaluations are
        counted as ``calibration`` and respect the budget.  Returns the
        profile, also kept as ``self.profile`` (and in ``state_dict``).
        """
        if self._in_shape is None:
            self._shape_inputs(tuple(x.shape[1:]))
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
        if self._in_shape is None:
            self._shape_inputs(tuple(x.shape[1:]))
        flat = x.detach().reshape(x.shape[0], self.prober.n_x)
        theta = None if self.params is None else self.params.detach().to(flat.dtype)
        alpha = join(flat, theta)
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
            "ledger": self.prober.ledger.as_dict(),
            "profile": None if self.profile is None else self.profile.state_dict(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.estimator.load_state_dict(state["estimator"])
        self.prober.ledger.load_dict(state["ledger"])
        # the checkpoint's profile wins; one without (saved before calibrating, or by a box that
        # never calibrates) leaves this box's own, e.g. a profile given to the constructor
        if state.get("profile") is not None:
            self.profile = DeviceProfile.from_state_dict(state["profile"])
        self.estimator.calibrate(self.profile)
        if state["in_shape"] is not None:
            self._shape_inputs(tuple(state["in_shape"]))
            if state["out_shape"] is not None:
                self.prober.out_shape = tuple(state["out_shape"])

    @property
    def differentiable(self) -> bool:
        """Whether the device's own graph is the backward (``differentiable=True``, or ``Exact()``).

        Read from the estimator at every call, so that a box given another
        estimator later follows it.
        """
        return bool(self.estimator.differentiates_device)

    # --------------------------------------------------------------- internal
    @property
    def _estimates_from_readings(self) -> bool:
        """Whether the estimator differences device readings or trains a model (not Exact nor a given derivative).

        Such an estimate needs more than half precision, and is checked for
        NaN and Inf before it leaves the box; a derivative the user wrote
        (:class:`~blackgrad.estimators.StraightThrough`) is torch code like
        any other, and passes as torch's own autograd passes it.
        """
        if self.differentiable:  # torch differentiates the device itself: no difference is taken
            return False
        return self.estimator.probe_cost(1, 1, 64) > 0 or isinstance(self.estimator, LearnedEstimator)

    def _shape_inputs(self, in_shape: tuple[int, ...]) -> None:
        self._in_shape = in_shape
        self.prober.shape_inputs(in_shape)

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
        alpha, y = _as_real(join(x, theta)), _as_real(y)
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
        if x.shape[0] == 0:  # an empty batch: nothing to estimate, nothing to spend
            return (torch.zeros_like(x) if need_x else None), (torch.zeros_like(theta) if need_theta else None)
        # Refused here, before the estimator draws a direction or spends an inner probe: a refused
        # backward leaves every estimator state (generators, buffers, fidelity) as it was.
        if self.prober.budget is not None:
            self.prober.check_budget(self._backward_cost(x.shape[0], need_x, need_theta, x.is_complex()), "backward")
        complex_ = x.is_complex()
        if complex_:  # the estimator sees each complex number as its real pair (see _RealView)
            real_theta = None if theta is None else torch.view_as_real(theta.resolve_conj()).reshape(-1)
            query = VJPQuery.from_parts(_as_real(x), real_theta, _as_real(y), _as_real(grad_y), need_x, need_theta)
        else:
            query = VJPQuery.from_parts(x, theta, y, grad_y, need_x, need_theta)
        answer = self.estimator.vjp(_RealView(self.prober) if complex_ else self.prober, query)
        try:
            grad_x, grad_theta = query.gradient(answer)
        except ValueError as err:
            raise RuntimeError(f"estimator {self.estimator!r} returned {err}") from None
        # A part whose gate was shut is withheld, not zeroed: an optimiser skips a None
        # gradient, where a zero would still advance its state (Adam's moments and step
        # count, so that the part's first steps after its gate opens are far too large).
        if grad_x is not None and self.estimator.withholds("inputs"):
            grad_x = None
        if grad_theta is not None and self.estimator.withholds("params"):
            grad_theta = None
        if self._estimates_from_readings and (
            (grad_x is not None and not all_finite(grad_x)) or (grad_theta is not None and not all_finite(grad_theta))
        ):
            raise FloatingPointError(
                f"estimator {self.estimator!r} returned NaN or Inf gradients for black box {self.name!r}"
            )
        if complex_:
            grad_x = None if grad_x is None else torch.view_as_complex(grad_x.reshape(x.shape[0], -1, 2).contiguous())
            grad_theta = None if grad_theta is None else torch.view_as_complex(grad_theta.reshape(-1, 2).contiguous())
        if grad_x is not None and grad_x.dtype != x.dtype:
            grad_x = grad_x.to(x.dtype)
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
