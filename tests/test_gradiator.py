"""gradiator and nondifferentiable: exact backward passes, tuples, needs_input_grad, errors."""

import numpy as np
import pytest
import torch

import blackgrad as bg
from blackgrad import GradientShapeError, NoGradientError, gradiator, nondifferentiable


def _square_grad(x, g):
    return 2 * x * g


square = gradiator(lambda x: x**2, _square_grad, name="square")


def test_gradcheck_single_input():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(square, (x,))


def test_gradcheck_two_inputs_and_tuple_output():
    # seed 004's op2 with a tuple result: (a*b, a+b)
    def fun(a, b):
        return a * b, a + b

    def grad_fun(a, b, grads):
        g_mul, g_add = grads
        return g_mul * b + g_add, g_mul * a + g_add

    op = gradiator(fun, grad_fun)
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (a, b))
    product, total = op(a, b)
    assert torch.allclose(product, a * b) and torch.allclose(total, a + b)


def test_grad_fun_is_told_which_gradients_are_needed():
    seen = []

    def grad_fun(a, b, g, needs_input_grad):
        seen.append(needs_input_grad)
        return (g * b if needs_input_grad[0] else None, g * a if needs_input_grad[1] else None)

    mul = gradiator(lambda a, b: a * b, grad_fun)
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3)  # no gradient wanted
    mul(a, b).sum().backward()
    assert seen == [(True, False)]
    assert torch.allclose(a.grad, b)


def test_unneeded_gradients_are_discarded():
    mul = gradiator(lambda a, b: a * b, lambda a, b, g: (g * b, g * a))
    a, b = torch.randn(3, requires_grad=True), torch.randn(3)
    mul(a, b).sum().backward()
    assert b.grad is None and torch.allclose(a.grad, b)


def test_numpy_forward_is_converted_to_input_dtype():
    sine = gradiator(lambda x: np.sin(x.detach().numpy()), lambda x, g: g * torch.cos(x))
    x = torch.randn(6, dtype=torch.float32, requires_grad=True)
    y = sine(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    y.sum().backward()
    assert torch.allclose(x.grad, torch.cos(x.detach()))


def test_composes_with_torch_func():
    x = torch.randn(4, dtype=torch.float64)
    grad = torch.func.grad(lambda v: square(v).sum())(x)
    assert torch.allclose(grad, 2 * x)
    _, vjp_fn = torch.func.vjp(square, x)
    (vjp,) = vjp_fn(torch.ones_like(x))
    assert torch.allclose(vjp, 2 * x)


def test_wrong_number_of_gradients_is_an_error():
    bad = gradiator(lambda a, b: a * b, lambda a, b, g: g * b, name="mul")
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(GradientShapeError, match=r"'mul' returned 1 gradient\(s\) for 2 inputs"):
        bad(a, b).sum().backward()


def test_wrong_gradient_shape_is_an_error():
    bad = gradiator(lambda x: x * 2, lambda x, g: g.sum(0), name="double")
    x = torch.randn(3, 2, requires_grad=True)
    with pytest.raises(GradientShapeError, match=r"shape \(2,\) for input 0 of shape \(3, 2\)"):
        bad(x).sum().backward()


def test_nondifferentiable_forward_works_and_errors_only_when_needed():
    def quantize(x):
        return torch.round(x * 4) / 4

    q = nondifferentiable(quantize)
    x = torch.randn(5, requires_grad=True)
    y = q(x)  # forward is fine even though x requires grad
    assert torch.equal(y, quantize(x.detach()))
    # Its output in a graph whose backward never needs it: fine.
    other = torch.randn(5, requires_grad=True)
    (other * 3 + y.detach()).sum().backward()
    assert other.grad is not None
    # Inputs that need no gradient: no error either.
    q(torch.randn(5)).sum()
    with pytest.raises(NoGradientError, match="'quantize'"):
        (q(x) * other).sum().backward()


def test_no_grad_is_a_deprecated_alias_of_nondifferentiable():
    def quantize(x):
        return torch.round(x * 4) / 4

    with pytest.warns(DeprecationWarning, match="blackgrad.no_grad is deprecated.*blackgrad.nondifferentiable"):
        q = bg.no_grad(quantize)
    x = torch.randn(5, requires_grad=True)
    assert torch.equal(q(x), quantize(x.detach()))
    with pytest.raises(NoGradientError, match="'quantize' .* declared nondifferentiable"):
        q(x).sum().backward()


def test_none_for_a_needed_gradient_is_an_error():
    bad = gradiator(lambda a, b: a * b, lambda a, b, g: (g * b, None), name="mul")
    a, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(GradientShapeError, match="'mul' returned None for input 1, whose gradient is needed"):
        bad(a, b).sum().backward()
