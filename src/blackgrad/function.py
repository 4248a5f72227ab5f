"""``gradiator``: a function with a hand-given backward, usable anywhere in a graph.

A function with a hand-written backward (``gradiator(fun, grad_fun)``, for
any number of inputs and outputs) and one declared to have none
(``nondifferentiable``), written as a ``torch.autograd.Function`` in the
``setup_context`` style so that it composes with ``torch.func``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import GradientShapeError, NoGradientError


def _as_output(value: Any, like: Tensor | None, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) or np.isscalar(value):
        out = torch.as_tensor(value)
        if like is not None:
            out = out.to(device=like.device, dtype=like.dtype if out.is_floating_point() else out.dtype)
        return out
    raise TypeError(f"{name} returned a {type(value).__name__}; expected a tensor, an array or a tuple of them")


class _FirstOrderOnly(torch.autograd.Function):
    """The identity on a gradient with no derivative of its own, tied to what it was computed from.

    A backward pass that reaches it raises: see :func:`first_order_only`.
    """

    @staticmethod
    def forward(grad: Tensor, message: str, *sources: Tensor) -> Tensor:
        return grad.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.message = inputs[1]

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> None:
        raise NoGradientError(ctx.message)


def first_order_only(grad: Tensor, message: str, *sources: Any) -> Tensor:
    """``grad``, marked so that differentiating it again raises :class:`NoGradientError` with ``message``.

    For a backward pass run with ``create_graph=True`` that returns a
    gradient it cannot differentiate (an estimate, numpy code): it depends
    on ``sources`` (the function's inputs, the incoming gradient), and
    dropping that dependence would make a second derivative silently wrong.
    Those of ``sources`` that require grad are tied to the mark; if none
    does, there is nothing to differentiate by and ``grad`` is returned as is.
    """
    tied = tuple(s for s in sources if isinstance(s, Tensor) and s.requires_grad)
    return _FirstOrderOnly.apply(grad, message, *tied) if tied else grad


def _accepts_keyword(fun: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def gradiator(fun: Callable[..., Any], grad_fun: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Wrap ``fun`` so that autograd uses ``grad_fun`` as its backward pass.

    ``gradiator(fun, grad_fun)(*inputs)`` returns ``fun(*inputs)`` — a tensor
    or a tuple of tensors (numpy arrays are converted, keeping the first
    tensor input's dtype and device).  When a gradient is needed, autograd
    calls ``grad_fun(*inputs, grad_output)`` where ``grad_output`` has the
    structure of the output (a tensor, or a tuple for a tuple output) and
    ``grad_fun`` returns the scaled gradient ``grad_outputᵀ ⋅ J`` for each
    input: a tensor for a single input, a tuple with one entry per input
    otherwise (``None`` for inputs without a gradient).

    Inputs whose gradient nobody needs cost nothing: if ``grad_fun`` accepts a
    keyword ``needs_input_grad`` it receives a tuple of bools saying which
    gradients are wanted; whatever it returns for the others is discarded.

    Errors: a ``grad_fun`` that returns the wrong number of gradients, a
    gradient of the wrong shape, or None for a gradient that is needed raises
    :class:`~blackgrad.errors.GradientShapeError` naming the function and the input.

    It composes with ``torch.func.grad``, ``vjp`` and ``jacrev``; not with
    ``torch.func.vmap``, since ``grad_fun`` is arbitrary Python.

    Higher derivatives (``create_graph=True``) go through ``grad_fun`` like
    through any torch code: right when it is written in differentiable torch
    operations.  A gradient it returns as a numpy array has no graph, and
    differentiating it again raises :class:`~blackgrad.errors.NoGradientError`
    instead of silently dropping its dependence on the inputs.

    Example::

        square = gradiator(lambda x: x**2, lambda x, g: 2 * x * g)
        mul = gradiator(lambda a, b: a * b, lambda a, b, g: (g * b, g * a))
    """
    if not callable(fun) or not callable(grad_fun):
        raise TypeError("gradiator(fun, grad_fun) needs two callables")
    label = name or getattr(fun, "__name__", type(fun).__name__)
    grad_label = getattr(grad_fun, "__name__", type(grad_fun).__name__)
    tells_needs = _accepts_keyword(grad_fun, "needs_input_grad")

    class Gradiator(torch.autograd.Function):
        @staticmethod
        def forward(*inputs: Any) -> Any:
            like = next((a for a in inputs if isinstance(a, Tensor)), None)
            out = fun(*inputs)
            if isinstance(out, (tuple, list)):
                return tuple(_as_output(o, like, label) for o in out)
            return _as_output(out, like, label)

        @staticmethod
        def setup_context(ctx: Any, inputs: Sequence[Any], output: Any) -> None:
            tensors = [a for a in inputs if isinstance(a, Tensor)]
            ctx.save_for_backward(*tensors)
            ctx.tensor_slots = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
            ctx.others = {i: a for i, a in enumerate(inputs) if not isinstance(a, Tensor)}
            ctx.n_inputs = len(inputs)
            ctx.tuple_output = isinstance(output, tuple)

        @staticmethod
        def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
            inputs: list[Any] = [None] * ctx.n_inputs
            for slot, tensor in zip(ctx.tensor_slots, ctx.saved_tensors):
                inputs[slot] = tensor
            for slot, value in ctx.others.items():
                inputs[slot] = value
            grad_output = tuple(grad_outputs) if ctx.tuple_output else grad_outputs[0]
            needs = tuple(ctx.needs_input_grad)
            kwargs = {"needs_input_grad": needs} if tells_needs else {}
            grads = grad_fun(*inputs, grad_output, **kwargs)
            return _checked_gradients(grads, inputs, needs, grad_outputs, label, grad_label)

    Gradiator.__name__ = Gradiator.__qualname__ = f"Gradiator[{label}]"

    def apply(*inputs: Any) -> Any:
        return Gradiator.apply(*inputs)

    apply.__name__ = label
    apply.__doc__ = getattr(fun, "__doc__", None)
    apply.function = Gradiator  # the autograd.Function, for introspection
    return apply


def _checked_gradients(
    grads: Any, inputs: list[Any], needs: tuple[bool, ...], grad_outputs: tuple[Tensor, ...], label: str, grad_label: str
) -> tuple[Tensor | None, ...]:
    """What a gradiator's ``grad_fun`` returned, as autograd takes it: one tensor per needed input.

    Raises :class:`~blackgrad.errors.GradientShapeError` for a wrong count,
    a None where a gradient is needed, or a wrong shape; a numpy gradient
    becomes a tensor like its input, refusing to be differentiated again
    under ``create_graph=True``.
    """
    if len(inputs) == 1 and not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if not isinstance(grads, (tuple, list)) or len(grads) != len(inputs):
        count = len(grads) if isinstance(grads, (tuple, list)) else 1
        raise GradientShapeError(
            f"grad_fun {grad_label!r} of {label!r} returned {count} gradient(s) for "
            f"{len(inputs)} inputs; return one per input (None where there is none)"
        )
    result: list[Tensor | None] = []
    for i, (grad, wanted) in enumerate(zip(grads, needs)):
        if not wanted:
            result.append(None)
            continue
        if grad is None:
            raise GradientShapeError(
                f"grad_fun {grad_label!r} of {label!r} returned None for input {i}, whose gradient is needed"
            )
        untracked = not isinstance(grad, Tensor)
        grad = _as_output(grad, inputs[i], grad_label)
        if untracked and torch.is_grad_enabled():  # create_graph=True, and numpy has no graph to give
            grad = first_order_only(
                grad,
                f"a second derivative through {label!r} was asked for (a gradient computed with "
                f"create_graph=True was differentiated again), but grad_fun {grad_label!r} returned "
                f"input {i}'s gradient as a numpy array, which has no derivative: write grad_fun in "
                "torch operations, or compute the first gradient with create_graph=False",
                *inputs,
                *grad_outputs,
            )
        if grad.shape != inputs[i].shape:
            raise GradientShapeError(
                f"grad_fun {grad_label!r} of {label!r} returned a gradient of shape "
                f"{tuple(grad.shape)} for input {i} of shape {tuple(inputs[i].shape)}"
            )
        result.append(grad)
    return tuple(result)


def nondifferentiable(fun: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Mark ``fun`` as having no known gradient.

    The forward pass works as usual.  The error comes only when, and only if,
    autograd actually needs a gradient through ``fun``: calling it on inputs
    that require grad is fine, and so is using its output in a graph that is
    never backpropagated through it.  Then it raises
    :class:`~blackgrad.errors.NoGradientError` naming the function.
    """
    label = name or getattr(fun, "__name__", type(fun).__name__)

    def refuse(*args: Any, needs_input_grad: tuple[bool, ...] = ()) -> Any:
        wanted = [i for i, flag in enumerate(needs_input_grad) if flag]
        raise NoGradientError(
            f"a gradient is needed through {label!r} (for input(s) {wanted}), but it was declared "
            "nondifferentiable: it has no known gradient. Wrap it in a BlackBox with an estimator, or "
            "detach its inputs."
        )

    refuse.__name__ = f"nondifferentiable[{label}]"
    return gradiator(fun, refuse, name=label)


def no_grad(fun: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """Deprecated name of :func:`nondifferentiable` (kept for one release).

    It read like ``torch.no_grad``, which turns gradients off; this one makes
    a needed gradient an error.
    """
    warnings.warn(
        "blackgrad.no_grad is deprecated and will be removed: it is blackgrad.nondifferentiable "
        "(a function with no known gradient), not torch.no_grad",
        DeprecationWarning,
        stacklevel=2,
    )
    return nondifferentiable(fun, name=name)
