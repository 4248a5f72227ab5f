"""The activation zoo: Cantor values, surrogate backward passes, Perlin noise, Jeff, the registry."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from blackgrad import BlackBox
from blackgrad.activations import (
    ACTIVATIONS,
    Cantor,
    Jeff,
    Perlin,
    Polynomial,
    Sin,
    ThresholdSigmoid,
    cantor,
)
from blackgrad.estimators import StraightThrough


def _cantor_reference(q: Fraction, digits: int) -> Fraction:
    """The definition, digit by digit, in exact rational arithmetic."""
    whole = q.numerator // q.denominator
    t, value, weight = q - whole, Fraction(0), Fraction(1, 2)
    for _ in range(digits):
        t *= 3
        digit = t.numerator // t.denominator
        t -= digit
        if digit >= 1:
            value += weight
        if digit == 1:
            break
        weight /= 2
    return whole + value


@pytest.mark.parametrize("x, expected", [(0, 0), (1 / 3, 1 / 2), (2 / 3, 1 / 2), (1 / 4, 1 / 3), (3 / 4, 2 / 3),
                                         (1 / 9, 1 / 4), (1, 1), (0.5, 0.5), (-1 / 4, -1 / 3), (2.25, 7 / 3)])
def test_cantor_known_values(x, expected):
    value = cantor(torch.tensor([x], dtype=torch.float64))
    assert abs(float(value) - expected) < 1e-9


def test_cantor_matches_the_digit_definition_for_any_digit_count():
    x = torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 8 - 4
    for digits in (1, 5, 8, 13, 32):
        exact = torch.tensor([float(_cantor_reference(Fraction(v), digits)) for v in x.tolist()], dtype=torch.float64)
        assert torch.equal(cantor(x, digits), exact)


def test_cantor_is_monotone_odd_and_periodic_with_unit_rise():
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    c = cantor(x)
    assert bool((c.diff() >= 0).all())
    assert float(c[0]) == 0.0 and float(c[-1]) == 1.0
    y = torch.linspace(-3, 3, 601, dtype=torch.float64)
    assert torch.allclose(cantor(-y), -cantor(y), atol=1e-9)
    assert torch.allclose(cantor(y + 1), cantor(y) + 1, atol=1e-9)
    assert float(cantor(torch.tensor([0.5], dtype=torch.float32))) == 0.5  # float32 in, float32 out
    with pytest.raises(ValueError, match="digits"):
        cantor(y, digits=0)


def test_cantor_backward_is_identity_and_its_true_derivative_is_zero():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, dtype=torch.float64)
    Cantor()(x).backward(g)
    assert torch.equal(x.grad, g)
    x.grad = None
    cantor(x).backward(g)
    assert torch.equal(x.grad, torch.zeros_like(g))


def test_cantor_agrees_with_a_black_box_with_straight_through_identity():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    box = BlackBox(cantor, StraightThrough("identity"))
    y_box = box(x)
    y_box.sum().backward()
    grad_box = x.grad.clone()
    x.grad = None
    y = Cantor()(x)
    y.sum().backward()
    assert torch.equal(y, y_box) and torch.equal(x.grad, grad_box)


def test_threshold_sigmoid_forward_is_zero_one_and_backward_is_the_sigmoid_slope():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64, requires_grad=True)
    y = ThresholdSigmoid()(x)
    assert set(y.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(y.detach(), (x > 0).double())
    g = torch.randn(81, dtype=torch.float64)
    y.backward(g)
    s = torch.sigmoid(x.detach())
    assert torch.allclose(x.grad, g * s * (1 - s))


def test_perlin_is_deterministic_under_its_seed_zero_at_integers_and_continuous():
    x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    a, b, other = Perlin(seed=3).double(), Perlin(seed=3).double(), Perlin(seed=4).double()
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), other(x))
    integers = torch.arange(-20, 21, dtype=torch.float64)
    assert float(a(integers).abs().max()) == 0.0
    assert float(a(x).diff().abs().max()) < 0.01  # steps of 1e-3 move it by at most ~2·amplitude·1e-3
    assert float(a(x).abs().max()) <= a.amplitude / 2 + 1e-12
    eps = 1e-9  # continuous across lattice points, from both sides
    near = torch.tensor([2.0 - eps, 2.0 + eps, -5.0 - eps, -5.0 + eps], dtype=torch.float64)
    assert float(a(near).abs().max()) < 1e-8


@pytest.mark.parametrize("module", [Perlin(seed=1, frequency=1.7), Sin(2.0), Polynomial((0.5, 1.0, -0.3, 0.1))],
                         ids=["perlin", "sin", "polynomial"])
def test_true_derivatives_pass_gradcheck(module):
    x = (torch.rand(40, dtype=torch.float64) * 6 - 3).requires_grad_(True)
    assert torch.autograd.gradcheck(module.double(), (x,))


def test_jeff_matches_its_docstring_definition_and_surrogate():
    primes = (2, 3, 5, 7, 11, 13, 17, 19)
    norm = sum(k**-0.5 for k in range(1, 9))

    def waves(x):
        return sum(torch.sin(p**0.5 * x + k) / k**0.5 for k, p in enumerate(primes, start=1)) / norm

    x = torch.linspace(-10, 10, 2001, dtype=torch.float64, requires_grad=True)
    u = torch.abs(torch.remainder(x.detach() / 2, 2) - 1)
    for _ in range(6):
        u = 3.9 * u * (1 - u)
    y = Jeff()(x)
    assert torch.allclose(y.detach(), waves(x.detach()) + 0.5 * (u - 0.5))
    assert float(y.detach().abs().max()) <= 1.25
    y.sum().backward()
    xd = x.detach().requires_grad_(True)
    (slope,) = torch.autograd.grad(waves(xd).sum(), xd)  # the surrogate: the sinusoids' derivative only
    assert torch.allclose(x.grad, slope)


def test_registry_builds_elementwise_modules():
    x = torch.randn(3, 7)
    for name, factory in ACTIVATIONS.items():
        module = factory()
        assert isinstance(module, nn.Module), name
        y = module(x)
        assert y.shape == x.shape and y.dtype == x.dtype, name
        assert torch.equal(module(x[1:2]), y[1:2]), name  # elementwise: rows do not interact
    assert {"relu", "gelu", "sin", "polynomial", "threshold_sigmoid", "cantor", "perlin", "jeff", "identity"} <= set(ACTIVATIONS)
