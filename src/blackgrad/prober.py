"""The only door to a black box: counting, batching, validation and retries.

Every evaluation of a device — the forward pass of training and every probe an
estimator asks for — goes through a :class:`Prober`.  That is what makes the
evaluation ledger honest: estimators never call the device themselves.

Conventions.  Inside blackgrad a black box is seen as a map on flat rows:
the device parameters θ (``p`` numbers, shared by a batch) are appended to each
flattened input ``x`` (``n`` numbers), giving ``α = (x, θ)`` of size
``d = n + p`` per sample, as seed 000 suggests.  The prober turns a batch of
``α`` rows back into the device's own calling convention — ``fun(x)`` or
``fun(x, θ)`` with ``x`` of shape ``(B, *in_shape)`` and one ``θ`` per call —
by grouping the rows that share the same ``θ`` into one call, then splitting
calls larger than ``max_batch``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .errors import BudgetExhausted, DeviceError, DeviceOutputError


@dataclass
class Ledger:
    """Counts of device evaluations, one per sample (a batch of B counts B).

    Attributes:
        forward: samples evaluated by forward passes.
        probe: samples evaluated by estimators to build gradients.
        calibration: samples evaluated to calibrate the estimators
            (:func:`~blackgrad.calibration.calibrate`).
        failed: samples sent in device calls that raised or returned unusable
            output (they were spent even though nothing came of them).
        device_calls: number of calls made to the device function.
        seconds: wall time spent inside the device function.
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
        delay: seconds to wait before the first retry; doubled at each further
            retry (exponential back-off for instruments that need to settle).
        exceptions: the exception types that count as a device failure; any
            other exception propagates untouched.
    """

    retries: int = 0
    retry_nonfinite: bool = True
    delay: float = 0.0
    exceptions: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"RetryPolicy.retries must be a non-negative int, got {self.retries!r}")
        if self.delay < 0:
            raise ValueError(f"RetryPolicy.delay must be >= 0, got {self.delay!r}")


class Prober:
    """Evaluates a black box on batches of flat ``α = (x, θ)`` rows, and counts.

    Args:
        fun: the black box, ``fun(x)`` or ``fun(x, theta)`` with ``x`` of shape
            ``(B, *in_shape)``; returns ``(B, *out_shape)`` as a tensor, a
            numpy array, or anything ``torch.as_tensor`` accepts.
        in_shape: shape of one input sample.
        n_params: size ``p`` of the flat device parameter vector θ (0: none,
            and ``fun`` is called with ``x`` alone).
        out_shape: shape of one output sample; learned from the first call
            when None.
        max_batch: largest number of samples sent in one device call (None:
            no limit).
        retry: the :class:`RetryPolicy`.
        budget: the most samples the device may evaluate in total (None: no
            limit).  A request that would exceed it raises
            :class:`~blackgrad.errors.BudgetExhausted` before any evaluation.
        numpy: call ``fun`` with numpy arrays instead of tensors.
        name: how errors name the device.

    ``recorder``: a :class:`~blackgrad.recording.Recorder` that every
    successful device call is written to before it returns (None: none).
    """

    recorder: Any = None

    def __init__(
        self,
        fun: Callable[..., Any],
        in_shape: tuple[int, ...],
        n_params: int = 0,
        out_shape: tuple[int, ...] | None = None,
        max_batch: int | None = None,
        retry: RetryPolicy | None = None,
        budget: int | None = None,
        numpy: bool = False,
        name: str | None = None,
    ) -> None:
        if not callable(fun):
            raise TypeError(f"the black box must be callable, got {type(fun).__name__}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive int or None, got {max_batch!r}")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be a non-negative int or None, got {budget!r}")
        self.fun = fun
        self.in_shape = tuple(in_shape)
        self.n_x = math.prod(self.in_shape)
        self.n_params = int(n_params)
        self.out_shape = None if out_shape is None else tuple(out_shape)
        self.max_batch = max_batch
        self.retry = retry if retry is not None else RetryPolicy()
        self.budget = budget
        self.numpy = numpy
        self.name = name or getattr(fun, "__name__", None) or type(fun).__name__
        self.ledger = Ledger()

    # ------------------------------------------------------------------ public
    def forward(self, x: Tensor, theta: Tensor | None, differentiable: bool = False) -> Tensor:
        """Evaluate a forward batch ``x`` of shape ``(B, n)``; counted as ``forward``."""
        return self._evaluate_groups([(x, theta)], kind="forward", differentiable=differentiable)[0]

    def __call__(self, alpha: Tensor, differentiable: bool = False, kind: str = "probe") -> Tensor:
        """Evaluate probe rows ``alpha`` of shape ``(N, n + p)``; counted as ``kind``.

        ``kind`` is ``"probe"`` (an estimator's) or ``"calibration"``.

        Rows that share the same θ part go to the device in one call.
        Returns ``(N, m)``.
        """
        if alpha.dim() != 2 or alpha.shape[1] != self.n_x + self.n_params:
            raise ValueError(
                f"probes for {self.name!r} must have shape (N, {self.n_x + self.n_params}), "
                f"got {tuple(alpha.shape)}"
            )
        if kind not in ("probe", "calibration"):
            raise ValueError(f"a prober request is a 'probe' or a 'calibration', not {kind!r}")
        x = alpha[:, : self.n_x]
        if self.n_params == 0:
            return self._evaluate_groups([(x, None)], kind=kind, differentiable=differentiable)[0]
        thetas = alpha[:, self.n_x :]
        keys = torch.view_as_real(thetas).flatten(1) if thetas.is_complex() else thetas
        unique, inverse = torch.unique(keys.detach(), dim=0, return_inverse=True)
        rows = [torch.nonzero(inverse == g).squeeze(1) for g in range(unique.shape[0])]
        groups = [(x[r], thetas[r[0]]) for r in rows]
        outputs = self._evaluate_groups(groups, kind=kind, differentiable=differentiable)
        y = outputs[0].new_empty((alpha.shape[0],) + outputs[0].shape[1:])
        if differentiable:  # keep the graph: assemble with index_put, not in place on a leaf
            y = torch.zeros_like(y)
            for r, out in zip(rows, outputs):
                y = y.index_put((r,), out)
            return y
        for r, out in zip(rows, outputs):
            y[r] = out
        return y

    # ---------------------------------------------------------------- internal
    def _evaluate_groups(self, groups: list[tuple[Tensor, Tensor | None]], kind: str, differentiable: bool) -> list[Tensor]:
        requested = sum(x.shape[0] for x, _ in groups)
        if requested == 0:
            if self.out_shape is None:
                raise ValueError(f"black box {self.name!r} was given an empty batch before its output shape was known")
            return [x.new_zeros((0, math.prod(self.out_shape))) for x, _ in groups]
        self._check_budget(requested, kind)
        outputs = []
        for x, theta in groups:
            step = self.max_batch or max(x.shape[0], 1)
            chunks = [self._call(x[i : i + step], theta, kind, differentiable) for i in range(0, x.shape[0], step)]
            outputs.append(chunks[0] if len(chunks) == 1 else torch.cat(chunks))
        return outputs

    def _check_budget(self, requested: int, kind: str) -> None:
        if self.budget is not None and self.ledger.total + requested > self.budget:
            raise BudgetExhausted(
                f"evaluation budget of {self.budget} samples for {self.name!r} is spent: "
                f"{self.ledger.total} used (forward={self.ledger.forward}, probe={self.ledger.probe}, "
                f"calibration={self.ledger.calibration}, failed={self.ledger.failed}) and this {kind} needs {requested} more; "
                "nothing of this request was evaluated. Raise the budget or reset the ledger to continue."
                + (
                    " Calibration needs its whole cost at once: or give BlackBox calibrate=False or a DeviceProfile."
                    if kind == "calibration"
                    else ""
                )
            )

    def _call(self, x: Tensor, theta: Tensor | None, kind: str, differentiable: bool) -> Tensor:
        """One device call with retries; returns ``(N, m)`` in x's dtype and device."""
        n = x.shape[0]
        args = self._device_arguments(x, theta)  # outside the retries: a conversion error is not a device failure
        attempts = 1 + self.retry.retries
        delay = self.retry.delay
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self._check_budget(n, kind + " retry")
                if delay > 0:
                    time.sleep(delay)
                    delay *= 2
            try:
                raw = self._invoke(args)
            except self.retry.exceptions as err:
                self.ledger.failed += n
                if attempt == attempts:
                    raise DeviceError(
                        f"black box {self.name!r} raised {type(err).__name__}: {err} "
                        f"(a {kind} call of {n} samples; attempt {attempt} of {attempts})"
                    ) from err
                continue
            try:
                y = self._validate(raw, x, n, kind, differentiable)
            except DeviceOutputError:
                self.ledger.failed += n
                raise
            finite = torch.isfinite(y.detach())
            if not bool(finite.all()):
                self.ledger.failed += n
                bad = (~finite).reshape(n, -1).any(1).nonzero().squeeze(1)
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

    def _device_arguments(self, x: Tensor, theta: Tensor | None) -> tuple[Any, ...]:
        batch = x.reshape((x.shape[0],) + self.in_shape)
        args: tuple[Any, ...] = (batch,) if self.n_params == 0 else (batch, theta)
        if self.numpy:
            # copies: a device that edits its input in place must not touch the model's tensors
            args = tuple(np.array(a.detach().cpu().numpy(), copy=True) for a in args)
        return args

    def _invoke(self, args: tuple[Any, ...]) -> Any:
        self.ledger.device_calls += 1
        start = time.perf_counter()
        try:
            return self.fun(*args)
        finally:
            self.ledger.seconds += time.perf_counter() - start

    def _validate(self, raw: Any, x: Tensor, n: int, kind: str, differentiable: bool) -> Tensor:
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
