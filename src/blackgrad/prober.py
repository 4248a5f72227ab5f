"""The only door to a black box: counting, batching, validation and retries.

Every evaluation of a device — the forward pass of training and every probe an
estimator asks for — goes through a :class:`Prober`.  That is what makes the
evaluation ledger honest: estimators never call the device themselves.

Conventions.  Inside blackgrad a black box is seen as a map on flat rows:
the device parameters θ (``p`` numbers, shared by a batch) are appended to each
flattened input ``x`` (``n`` numbers), giving ``α = (x, θ)`` of size
``d = n + p`` per sample: the device parameters are inputs like any
other to an estimator, shared by every row of a batch.  The prober turns probes
back into the device's own calling convention — ``fun(x)`` or ``fun(x, θ)``
with ``x`` of shape ``(B, *in_shape)`` and one ``θ`` per call — one call per
θ, split where it is larger than ``max_batch``.  The estimators hand their
probes over already grouped by θ (:meth:`Prober.evaluate`, through
:meth:`~blackgrad.estimators.VJPQuery.evaluate`); whole ``α`` rows
(:meth:`Prober.__call__`) are grouped here by their θ part.
"""

from __future__ import annotations

import cmath
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .errors import BudgetExhausted, DeviceError, DeviceOutputError, DeviceTimeout


@dataclass
class Ledger:
    """Counts of device evaluations, one per sample (a batch of B counts B).

    Attributes:
        forward: samples evaluated by forward passes.
        probe: samples evaluated by estimators to build gradients.
        calibration: samples evaluated to calibrate the estimators
            (:func:`~blackgrad.calibration.calibrate`).
        failed: samples sent in device calls that raised (an exception the
            retry policy retries or not, ``KeyboardInterrupt`` included),
            timed out, or returned unusable output: they were spent even
            though nothing came of them.
        device_calls: number of calls made to the device function.
        seconds: wall time spent waiting for the device function (for a
            call that timed out: until it was abandoned).

    What "counted" means: every sample handed to the device in a call that
    was started counts exactly once — under its kind when the call returned
    usable output, else as ``failed`` — whatever became of the call.  The
    ledger measures device time paid, not results obtained.
    """

    forward: int = 0
    probe: int = 0
    calibration: int = 0
    failed: int = 0
    device_calls: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Every sample the device was asked to evaluate: forward + probe + calibration + failed."""
        return self.forward + self.probe + self.calibration + self.failed

    def reset(self) -> None:
        """Set every count back to zero."""
        self.forward = self.probe = self.calibration = self.failed = self.device_calls = 0
        self.seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "forward": self.forward,
            "probe": self.probe,
            "calibration": self.calibration,
            "failed": self.failed,
            "total": self.total,
            "device_calls": self.device_calls,
            "seconds": self.seconds,
        }

    def load_dict(self, state: dict[str, Any]) -> None:
        for key in ("forward", "probe", "failed", "device_calls", "seconds"):
            setattr(self, key, state[key])
        self.calibration = state.get("calibration", 0)  # absent from ledgers saved before calibration existed

    def __repr__(self) -> str:
        return (
            f"Ledger(forward={self.forward}, probe={self.probe}, calibration={self.calibration}, failed={self.failed}, "
            f"total={self.total}, device_calls={self.device_calls}, seconds={self.seconds:.3g})"
        )


@dataclass
class RetryPolicy:
    """What to do when the device raises or returns NaN/Inf.

    Args:
        retries: how many times a failed device call is repeated before the
            error is raised (0: fail at once).
        retry_nonfinite: treat NaN/Inf output as a failed call that may be
            retried (a glitching instrument); if False it raises at once.
        retry_malformed: treat unusable output — the wrong shape, say, a
            readout cut short — as a failed call that may be retried; if
            False (the default: a wrong shape is most often a bug in the
            device code, which no retry mends) it raises at once.
        delay: seconds to wait before the first retry; doubled at each further
            retry (exponential back-off for instruments that need to settle).
        exceptions: the exception types that count as a device failure and
            are retried; any other exception propagates untouched (its
            samples are still counted, as ``failed``).
        timeout: seconds a device call may take (None: no limit).  A call
            that takes longer is abandoned and counted as failed, then
            retried like any other failure, and finally raised as
            :class:`~blackgrad.errors.DeviceTimeout`.  With a timeout the
            device runs in a worker thread; a hung Python call cannot be
            killed, only abandoned: it may go on running in that thread, and
            whatever it returns later is discarded, never counted.  A device
            that is not safe to call from two threads at once should
            therefore not resume after its timeout.

    With ``retries=r`` a request of ``N`` samples may spend up to ``N·(1 + r)``
    evaluations; a budget reserves that worst case before the first one.
    """

    retries: int = 0
    retry_nonfinite: bool = True
    retry_malformed: bool = False
    delay: float = 0.0
    exceptions: tuple[type[BaseException], ...] = field(default=(Exception,))
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"RetryPolicy.retries must be a non-negative int, got {self.retries!r}")
        if self.delay < 0:
            raise ValueError(f"RetryPolicy.delay must be >= 0, got {self.delay!r}")
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {self.timeout!r}")


class Prober:
    """Evaluates a black box on batches of flat ``α = (x, θ)`` rows, and counts.

    Args:
        fun: the black box, ``fun(x)`` or ``fun(x, theta)`` with ``x`` of shape
            ``(B, *in_shape)``; returns ``(B, *out_shape)`` as a tensor, a
            numpy array, or anything ``torch.as_tensor`` accepts.
        in_shape: shape of one input sample (None: unknown until :meth:`shape_inputs`).
        n_params: size ``p`` of the flat device parameter vector θ (0: none,
            and ``fun`` is called with ``x`` alone).
        out_shape: shape of one output sample; learned from the first call
            when None.
        max_batch: largest number of samples sent in one device call (None:
            no limit).
        retry: the :class:`RetryPolicy`.
        budget: the most samples the device may evaluate in total (None: no
            limit).  A request that might exceed it — counting every retry
            the policy allows, the worst case — raises
            :class:`~blackgrad.errors.BudgetExhausted` before any
            evaluation, so the budget is never exceeded.
        numpy: call ``fun`` with numpy arrays instead of tensors.
        name: how errors name the device.
        copy_inputs: hand a torch device copies of its inputs (the default),
            so that one that edits them in place cannot touch the model's
            tensors; on CPU copy-on-write ones (:func:`_private_copy`).  False: the device promises not to; it gets the inputs
            themselves (θ is still copied), and an edit is caught by the
            tensor's version counter after the call and raised as
            :class:`~blackgrad.errors.DeviceError` (also when the call
            raised, before any retry).  Numpy devices always get copies (a
            numpy edit moves no version counter), and so does every device
            with a ``timeout``: an abandoned call may edit its input later.

    ``recorder``: a :class:`~blackgrad.recording.Recorder` that every
    successful device call is written to before it returns (None: none).
    """

    recorder: Any = None

    def __init__(
        self,
        fun: Callable[..., Any],
        in_shape: tuple[int, ...] | None,
        n_params: int = 0,
        out_shape: tuple[int, ...] | None = None,
        max_batch: int | None = None,
        retry: RetryPolicy | None = None,
        budget: int | None = None,
        numpy: bool = False,
        name: str | None = None,
        copy_inputs: bool = True,
    ) -> None:
        if not callable(fun):
            raise TypeError(f"the black box must be callable, got {type(fun).__name__}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {max_batch!r}")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative int or None, got {budget!r}")
        self.fun = fun
        self.in_shape: tuple[int, ...] | None = None
        self.n_x: int | None = None
        self._flat_inputs = False  # until the shape is known
        if in_shape is not None:
            self.shape_inputs(in_shape)
        self.n_params = int(n_params)
        self.out_shape = None if out_shape is None else tuple(out_shape)
        self.max_batch = max_batch
        self.retry = retry if retry is not None else RetryPolicy()
        self.budget = budget
        self.numpy = numpy
        if not isinstance(copy_inputs, bool):
            raise TypeError(f"copy_inputs must be True or False, got {copy_inputs!r}")
        self.copy_inputs = copy_inputs
        self.name = name or getattr(fun, "__name__", None) or type(fun).__name__
        self.ledger = Ledger()
        self._worker: _Worker | None = None  # runs the device calls when there is a timeout

    def shape_inputs(self, in_shape: tuple[int, ...]) -> None:
        """Set the shape of one input sample (a :class:`~blackgrad.BlackBox` learns it from its first batch)."""
        self.in_shape = tuple(in_shape)
        self.n_x = math.prod(self.in_shape)
        self._flat_inputs = len(self.in_shape) == 1  # rows (N, n) are already the device's shape

    # ------------------------------------------------------------------ public
    def forward(self, x: Tensor, theta: Tensor | None, differentiable: bool = False) -> Tensor:
        """Evaluate a forward batch ``x`` of shape ``(B, n)``; counted as ``forward``."""
        batch, step = x.shape[0], self.max_batch
        if batch and (step is None or batch <= step):  # one call: the common case, without building a request
            if self.budget is not None:
                self.check_budget(batch, "forward")
            return self._call(x, theta, "forward", differentiable)
        return self._evaluate_groups([(x, theta)], kind="forward", differentiable=differentiable)[0]

    def evaluate(
        self, x: Tensor, theta: Tensor | None = None, group: Tensor | None = None, kind: str = "probe", differentiable: bool = False
    ) -> Tensor:
        """Evaluate probes grouped by their θ; counted as ``kind``.  Returns ``(N, m)``.

        ``x`` ``(N, n)`` are the inputs; ``theta`` is None (no parameters),
        one ``(p,)`` for every row, or the distinct values ``(G, p)`` with
        ``group`` ``(N,)`` naming each row's.  Each group goes to the device
        in one call (split at ``max_batch``), in the order of ``theta``'s
        rows.  An estimator knows which of its probes share a θ when it draws
        them (:meth:`~blackgrad.estimators.VJPQuery.evaluate`), so nothing here
        compares rows.  ``kind`` is ``"probe"`` (an estimator's) or
        ``"calibration"``.
        """
        if kind not in ("probe", "calibration"):
            raise ValueError(f"a prober request is a 'probe' or a 'calibration', not {kind!r}")
        if x.dim() != 2 or x.shape[1] != self.n_x:
            raise ValueError(f"probe inputs for {self.name!r} must have shape (N, {self.n_x}), got {tuple(x.shape)}")
        if theta is None or theta.dim() == 1:
            if (theta is None) != (self.n_params == 0) or (theta is not None and theta.shape[0] != self.n_params):
                raise ValueError(f"{self.name!r} takes {self.n_params} parameters, got θ of shape {_shape(theta)}")
            return self._evaluate_groups([(x, theta)], kind=kind, differentiable=differentiable)[0]
        if theta.dim() != 2 or theta.shape[1] != self.n_params or group is None or group.shape != (x.shape[0],):
            raise ValueError(
                f"grouped probes for {self.name!r} need θ values (G, {self.n_params}) and a group (N,) for N = "
                f"{x.shape[0]} rows, got θ {_shape(theta)} and group {_shape(group)}"
            )
        if theta.shape[0] == 1:
            return self._evaluate_groups([(x, theta[0])], kind=kind, differentiable=differentiable)[0]
        # each group's rows in their order: one stable sort of the group numbers, then slices
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=theta.shape[0]).tolist()
        rows = [r for r in torch.split(order, counts) if r.numel()]
        present = [g for g, c in enumerate(counts) if c]
        outputs = self._evaluate_groups([(x[r], theta[g]) for r, g in zip(rows, present)], kind=kind, differentiable=differentiable)
        if differentiable:  # keep the graph: assemble with index_put, not in place on a leaf
            y = outputs[0].new_zeros((x.shape[0],) + outputs[0].shape[1:])
            for r, out in zip(rows, outputs):
                y = y.index_put((r,), out)
            return y
        y = outputs[0].new_empty((x.shape[0],) + outputs[0].shape[1:])
        for r, out in zip(rows, outputs):
            y[r] = out
        return y

    def __call__(self, alpha: Tensor, differentiable: bool = False, kind: str = "probe") -> Tensor:
        """Evaluate probe rows ``alpha`` of shape ``(N, n + p)``; counted as ``kind``.

        Whole rows ``α = (x, θ)``, for an estimator that does not say which
        of its rows share a θ: rows with the same θ part are found here and
        go to the device in one call (:meth:`evaluate`).  Returns ``(N, m)``.
        """
        if alpha.dim() != 2 or alpha.shape[1] != self.n_x + self.n_params:
            raise ValueError(
                f"probes for {self.name!r} must have shape (N, {self.n_x + self.n_params}), "
                f"got {tuple(alpha.shape)}"
            )
        x = alpha[:, : self.n_x]
        if self.n_params == 0:
            return self.evaluate(x, None, kind=kind, differentiable=differentiable)
        thetas = alpha[:, self.n_x :]
        keys = torch.view_as_real(thetas).flatten(1) if thetas.is_complex() else thetas
        unique, inverse = torch.unique(keys.detach(), dim=0, return_inverse=True)
        # one θ per group, the first row's (the graph of a differentiable request runs through it)
        first = torch.full((unique.shape[0],), alpha.shape[0], dtype=torch.long, device=alpha.device)
        first.scatter_reduce_(0, inverse, torch.arange(alpha.shape[0], device=alpha.device), "amin")
        return self.evaluate(x, thetas[first], inverse, kind=kind, differentiable=differentiable)

    # ---------------------------------------------------------------- internal
    def _evaluate_groups(self, groups: list[tuple[Tensor, Tensor | None]], kind: str, differentiable: bool) -> list[Tensor]:
        requested = sum(x.shape[0] for x, _ in groups)
        if requested == 0:
            if self.out_shape is None:
                raise ValueError(f"black box {self.name!r} was given an empty batch before its output shape was known")
            return [x.new_zeros((0, math.prod(self.out_shape))) for x, _ in groups]
        self.check_budget(requested, kind)
        outputs = []
        for x, theta in groups:
            step = self.max_batch
            if step is None or x.shape[0] <= step:  # one call, without slicing a view of x for it
                outputs.append(self._call(x, theta, kind, differentiable))
                continue
            chunks = [self._call(x[i : i + step], theta, kind, differentiable) for i in range(0, x.shape[0], step)]
            outputs.append(torch.cat(chunks))
        return outputs

    def worst_case(self, requested: int) -> int:
        """The most evaluations a request of ``requested`` samples can spend: every call retried as often as allowed."""
        return requested * (1 + self.retry.retries)

    @property
    def remaining(self) -> int | None:
        """Evaluations left in the budget (None: no budget)."""
        return None if self.budget is None else max(self.budget - self.ledger.total, 0)

    def check_budget(self, requested: int, kind: str, after: int = 0, after_what: str = "") -> None:
        """Refuse, before any evaluation, a request that might not fit the budget.

        ``requested`` samples of ``kind``, plus ``after`` samples that must
        follow for the request to be of use (``after_what``: the backward
        pass of a forward batch, say), each counted with every retry the
        policy allows (:meth:`worst_case`), so that what is admitted can
        never exceed the budget, whatever the device does.
        """
        if self.budget is None:
            return
        need = self.worst_case(requested + after)
        if self.ledger.total + need <= self.budget:
            return
        ledger, retries = self.ledger, self.retry.retries
        message = (
            f"evaluation budget of {self.budget} samples for {self.name!r} is spent: "
            f"{ledger.total} used (forward={ledger.forward}, probe={ledger.probe}, "
            f"calibration={ledger.calibration}, failed={ledger.failed}), {self.remaining} remain, "
            f"and this {kind} needs {requested} more"
        )
        if after:
            message += f" and {after_what} {after} (checked now, so that a step never stops half-way)"
        if retries:
            plural = "retry" if retries == 1 else "retries"
            message += f"; {need} with the {retries} {plural} per call the retry policy allows, the most it can spend"
        message += (
            f"; nothing of this request was evaluated and no state was changed. Raise the budget "
            f"(box.budget = {ledger.total + need} or more) or reset the ledger (box.calls.reset()), then redo the step"
        )
        if kind == "backward":
            message += (
                " from its forward pass (zero the gradients first: the layers after the black box already hold "
                "this step's gradients)"
            )
        message += "."
        if kind == "calibration":
            message += " Calibration needs its whole cost at once: or give BlackBox calibrate=False or a DeviceProfile."
        raise BudgetExhausted(message)

    def _call(self, x: Tensor, theta: Tensor | None, kind: str, differentiable: bool) -> Tensor:
        """One device call with retries; returns ``(N, m)`` in x's dtype and device.

        Every attempt's samples are counted once: under ``kind`` when it
        returned usable output, else as ``failed`` — whatever the exception,
        inside the retry policy or not (``KeyboardInterrupt`` too).
        """
        n = x.shape[0]
        attempts = 1 + self.retry.retries
        delay = self.retry.delay
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.check_budget(n, kind + " retry")  # reserved by the request already; a last guard
                if delay > 0:
                    time.sleep(delay)
                    delay *= 2
            # fresh copies at every attempt, outside the try: a conversion error is not a device failure
            args = self._device_arguments(x, theta)
            shared_input = not (self.copy_inputs or self.numpy or self.retry.timeout is not None)
            version = args[0]._version if shared_input else None
            try:
                raw = self._invoke(args)
            except DeviceTimeout as err:
                self.ledger.failed += n
                if attempt == attempts:
                    raise DeviceTimeout(
                        f"{err} (a {kind} call of {n} samples; attempt {attempt} of {attempts}); the call was "
                        "abandoned and its samples counted as failed. Raise BlackBox(timeout=...) if the device "
                        "is merely slow, or retries= if it hangs now and then"
                    ) from None
                continue
            except self.retry.exceptions as err:
                self.ledger.failed += n
                self._check_unedited(args, version, kind, n, counted=True)  # a retry would run on the edited input
                if attempt == attempts:
                    raise DeviceError(
                        f"black box {self.name!r} raised {type(err).__name__}: {err} "
                        f"(a {kind} call of {n} samples; attempt {attempt} of {attempts})"
                    ) from err
                continue
            except BaseException:
                self.ledger.failed += n  # outside the retry policy, but the samples were sent and paid for
                self._check_unedited(args, version, kind, n, counted=True)
                raise
            if version is not None:
                self._check_unedited(args, version, kind, n)
            try:
                y = self._validate(raw, x, n, kind, differentiable)
            except DeviceOutputError as err:
                self.ledger.failed += n
                if not self.retry.retry_malformed:
                    raise
                if attempt == attempts:
                    raise DeviceOutputError(f"{err} (attempt {attempt} of {attempts})") from None
                continue
            except BaseException:
                self.ledger.failed += n
                raise
            if not all_finite(y if not y.requires_grad else y.detach()):
                self.ledger.failed += n
                bad = (~torch.isfinite(y.detach())).reshape(n, -1).any(1).nonzero().squeeze(1)
                message = (
                    f"black box {self.name!r} returned NaN or Inf for {bad.numel()} of {n} samples "
                    f"(first at sample {int(bad[0])}) in a {kind} call; attempt {attempt} of {attempts}"
                )
                if not self.retry.retry_nonfinite or attempt == attempts:
                    raise DeviceOutputError(message)
                continue
            setattr(self.ledger, kind, getattr(self.ledger, kind) + n)
            if self.recorder is not None:
                self.recorder.write(self, kind, x, theta, y)
            return y
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_unedited(self, args: tuple[Any, ...], version: int | None, kind: str, n: int, counted: bool = False) -> None:
        """Raise if a device handed the model's own input (``copy_inputs=False``) edited it in place.

        ``version``: the input's version counter before the call (None: it had a copy).
        ``counted``: the call's samples are already counted as failed (it raised).
        """
        if version is None or args[0]._version == version:
            return
        if not counted:
            self.ledger.failed += n  # spent, and nothing of it can be trusted
        raise DeviceError(
            f"black box {self.name!r} edited its input in place in a {kind} call of {n} samples, although "
            "it was given copy_inputs=False (the promise not to): the inputs are changed now. Leave "
            "copy_inputs at True for this device"
        )

    def _shaped(self, x: Tensor) -> Tensor:
        """Rows ``(N, n)`` as the device's batch ``(N, *in_shape)``."""
        if self.in_shape is None:
            raise ValueError(
                f"the prober of {self.name!r} does not know the shape of one input sample yet: give "
                "Prober(..., in_shape=...) or call shape_inputs() before evaluating (a BlackBox does this itself)"
            )
        return x.reshape((x.shape[0],) + self.in_shape)

    def _device_arguments(self, x: Tensor, theta: Tensor | None) -> tuple[Any, ...]:
        batch = x if self._flat_inputs else self._shaped(x)
        # Copies: a device that edits its input in place must not touch the model's tensors
        # (θ, the activations upstream, the rows an estimator reuses).  A torch copy keeps the
        # autograd graph, for estimators that differentiate the device.
        #
        # Why the inputs' copy is not skipped on its own: the forward batch is the model's
        # activation (or the user's data), the rows of a one-group probe are the estimator's,
        # which it may read again after the call (Broyden does), and the rows the prober gathers
        # for a group are written to the recording after the call.  A version counter sees an
        # edit only after it happened, when the tensor is already changed; it cannot undo one.
        # So the copy stays unless the device promises not to edit (copy_inputs=False), and the
        # counter then holds it to that promise (see _call).  θ is copied always: p numbers,
        # and the model's parameters themselves.
        if self.numpy:
            args = (batch,) if self.n_params == 0 else (batch, theta)
            return tuple(np.array(a.detach().cpu().numpy(), copy=True) for a in args)
        # With a time-out the copy stays too: an abandoned call may go on running, and edit its
        # input, after every check of ours is over.
        if self.copy_inputs or self.retry.timeout is not None:
            batch = _private_copy(batch)
        return (batch,) if theta is None else (batch, _private_copy(theta))

    def _invoke(self, args: tuple[Any, ...]) -> Any:
        self.ledger.device_calls += 1
        start = time.perf_counter()
        try:
            if self.retry.timeout is None:
                return self.fun(*args)
            return self._invoke_in_worker(args, self.retry.timeout)
        finally:
            self.ledger.seconds += time.perf_counter() - start

    def _invoke_in_worker(self, args: tuple[Any, ...], timeout: float) -> Any:
        """Call the device in the worker thread and wait at most ``timeout`` seconds.

        A call still running then is abandoned (a thread cannot be killed):
        it may finish later, into an outcome nobody reads, and its worker
        then ends; the next call gets a new worker.  Grad and inference mode
        are per thread, so the worker takes the caller's.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()
        grad_enabled, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run() -> None:
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled):
                    outcome["value"] = self.fun(*args)
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err
            finally:
                done.set()

        if self._worker is None:
            self._worker = _Worker(f"blackgrad device {self.name}")
        self._worker.submit(run)
        try:
            finished = done.wait(timeout)
        except BaseException:  # Ctrl-C while waiting: the call goes on, but no later call may queue behind it
            finished = False
            raise
        finally:
            if not finished:
                self._worker.retire()  # it ends once the abandoned call returns, if ever
                self._worker = None
        if not finished:
            raise DeviceTimeout(f"black box {self.name!r} did not answer within its timeout of {timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_worker"] = None  # a thread is not copied or pickled: a copy starts its own
        return state

    def _validate(self, raw: Any, x: Tensor, n: int, kind: str, differentiable: bool) -> Tensor:
        if (
            type(raw) is Tensor
            and raw.dtype == x.dtype
            and raw.device == x.device
            and raw.dim() == 2
            and raw.shape[0] == n
            and self.out_shape is not None
            and len(self.out_shape) == 1
            and raw.shape[1] == self.out_shape[0]
        ):  # flat rows in the caller's dtype, shaped as before: the checks below would change nothing
            return raw if differentiable else raw.detach()
        if isinstance(raw, Tensor):
            y = raw
        else:
            try:
                y = torch.as_tensor(np.asarray(raw))
            except (TypeError, ValueError, RuntimeError) as err:
                raise DeviceOutputError(
                    f"black box {self.name!r} returned a {type(raw).__name__}, which is not an array "
                    f"or tensor ({err})"
                ) from err
        if not (y.is_floating_point() or y.is_complex()):
            y = y.to(torch.get_default_dtype())
        # Keep the caller's dtype and device: a numpy device answers float64 on CPU.
        dtype = x.dtype
        if y.is_complex() and not x.is_complex():
            raise DeviceOutputError(f"black box {self.name!r} returned complex output for real input")
        if x.is_complex() and not y.is_complex():
            dtype = x.real.dtype
        y = y.to(device=x.device, dtype=dtype)
        if not differentiable:
            y = y.detach()
        if y.dim() == 0 or y.shape[0] != n:
            raise DeviceOutputError(
                f"black box {self.name!r} returned shape {tuple(y.shape)} for a {kind} batch of {n} "
                f"samples; expected ({n}, ...): the first dimension must be the batch"
            )
        if self.out_shape is None:
            self.out_shape = tuple(y.shape[1:])
        elif tuple(y.shape[1:]) != self.out_shape:
            raise DeviceOutputError(
                f"black box {self.name!r} returned shape {tuple(y.shape)} in a {kind} call; "
                f"expected {(n,) + self.out_shape} like its earlier outputs"
            )
        return y.reshape(n, -1)


def _shape(t: Tensor | None) -> Any:
    return None if t is None else tuple(t.shape)


# torch's copy-on-write clone (torch >= 2.2; absent: every copy is made at once)
_lazy_clone = getattr(torch, "_lazy_clone", None)


def _private_copy(t: Tensor) -> Tensor:
    """A copy of ``t`` that its receiver may edit without touching ``t``.

    On CPU a copy-on-write clone: the two tensors share memory until either
    is written, and the first write — in place, through ``out=``, a numpy
    view, DLPack or a raw ``data_ptr()`` — gives the writer memory of its
    own first (tested).  A device that only reads its input, the usual
    kind, then costs no memory copy at all, which on a cheap device and a
    wide batch is most of the wrapper's cost.  Elsewhere, and on a torch
    without it, an ordinary clone.
    """
    if _lazy_clone is not None and t.is_cpu:
        return _lazy_clone(t)
    return t.clone()


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite (no NaN, no ±Inf).

    A sum is NaN or Inf whenever one of its terms is, so a finite sum proves
    every entry finite in one reduction — some fifty times faster on CPU
    than ``torch.isfinite(t).all()``, which writes and reads a boolean mask.
    Only a sum that is not finite (a NaN or Inf, or finite entries whose sum
    overflows) needs the entry-by-entry test.
    """
    if cmath.isfinite(t.sum().item()):  # a Python number: no further tensor operations on the sum
        return True
    return bool(torch.isfinite(t).all())


class _Worker:
    """A daemon thread running device calls one at a time, for a prober with a timeout.

    One thread kept for all calls: starting a thread per call costs far more
    than handing a call to a waiting one.  Daemon, so that a call that never
    returns cannot keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def retire(self) -> None:
        """End the thread after the job in hand (which may be hung)."""
        self._jobs.put(None)
