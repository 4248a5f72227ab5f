"""Gradient transforms: SignFlip's rate, PowerSign's ends, where each transform acts, errors."""

import math

import pytest
import torch
from torch import nn

from blackgrad.transforms import (
    FeedbackLinear,
    PerturbBackward,
    PowerSign,
    SignFlip,
    SignOnly,
    apply_to_gradients,
    feedback_linear,
    perturb_backward,
    register_gradient_hooks,
)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.45, 0.5, 0.9, 1.0])
def test_sign_flip_rate_is_within_a_binomial_bound(p):
    n = 200_000
    g = torch.rand(n, dtype=torch.float64) + 0.5  # strictly positive: a flip is a negative entry
    flipped = int((SignFlip(p, seed=3)(g) < 0).sum())
    bound = 5 * math.sqrt(n * p * (1 - p)) + 1  # 5 sigma
    assert abs(flipped - n * p) <= bound
    assert torch.equal(SignFlip(p, seed=3)(g).abs(), g)  # magnitudes untouched


def test_sign_flip_repeats_under_a_seed_and_restores_its_state():
    g = torch.randn(1000)
    a, b = SignFlip(0.3, seed=7), SignFlip(0.3, seed=7)
    assert torch.equal(a(g), b(g))
    state = a.state_dict()
    first = a(g)
    assert not torch.equal(first, a(g))  # a fresh mask at every call
    a.load_state_dict(state)
    assert torch.equal(a(g), first)


def test_per_member_probabilities_act_on_the_first_dimension():
    g = torch.ones(3, 50, 40)
    out = SignFlip([0.0, 1.0, 0.5], seed=0)(g)
    assert torch.equal(out[0], g[0]) and torch.equal(out[1], -g[1])
    assert 0.4 < float((out[2] < 0).double().mean()) < 0.6
    with pytest.raises(ValueError, match="first dimension"):
        SignFlip([0.1, 0.2], seed=0)(g)


def test_power_sign_ends_are_exact():
    g = torch.randn(64, 9, dtype=torch.float64)
    g[0, 0] = 0.0
    assert torch.equal(PowerSign(1.0)(g), g)
    assert torch.equal(PowerSign(0.0)(g), torch.sign(g))
    assert torch.equal(SignOnly()(g), torch.sign(g))
    half = PowerSign(0.5)(g)
    assert torch.allclose(half, g.abs().sqrt() * g.sign())
    members = PowerSign([1.0, 0.0])(g[:2])
    assert torch.equal(members[0], g[0]) and torch.equal(members[1], g[1].sign())


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.3", [[0.1]]])
def test_sign_flip_rejects_bad_probabilities(bad):
    with pytest.raises(ValueError, match="probability"):
        SignFlip(bad)


@pytest.mark.parametrize("bad", [-1.0, float("inf")])
def test_power_sign_rejects_bad_exponents(bad):
    with pytest.raises(ValueError, match="gamma"):
        PowerSign(bad)


def test_perturb_backward_is_identity_forward_and_transforms_the_gradient_exactly():
    x = torch.randn(8, 5, requires_grad=True)
    g = torch.randn(8, 5)
    layer = perturb_backward(SignFlip(0.3, seed=11))
    assert isinstance(layer, PerturbBackward)
    y = layer(x)
    assert torch.equal(y, x)
    y.backward(g)
    assert torch.equal(x.grad, SignFlip(0.3, seed=11)(g))  # the same mask the layer drew


def test_perturb_backward_damages_only_what_comes_before_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), PerturbBackward(SignOnly()), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    net(x).square().sum().backward()
    damaged = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    h = torch.tanh(net[0](x)).detach().requires_grad_(True)
    net[3](h).square().sum().backward()
    assert torch.equal(damaged[2], net[3].weight.grad)  # after the perturbation: exact
    pre = net[0](x)
    expected = torch.autograd.grad(torch.tanh(pre), pre, torch.sign(h.grad))[0].T @ x
    assert torch.allclose(damaged[0], expected)


def test_perturb_backward_with_identity_passes_gradcheck():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PerturbBackward(PowerSign(1.0)), (x,))


def test_apply_to_gradients_and_hooks_transform_parameter_gradients():
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    x = torch.randn(10, 5)
    net(x).sum().backward()
    exact = [p.grad.clone() for p in net.parameters()]
    apply_to_gradients(net.parameters(), SignOnly())
    assert all(torch.equal(p.grad, e.sign()) for p, e in zip(net.parameters(), exact))

    net.zero_grad(set_to_none=True)
    handles = register_gradient_hooks(net.parameters(), SignFlip(1.0))
    net(x).sum().backward()
    assert all(torch.equal(p.grad, -e) for p, e in zip(net.parameters(), exact))
    for handle in handles:
        handle.remove()
    net.zero_grad(set_to_none=True)
    net(x).sum().backward()
    assert all(torch.equal(p.grad, e) for p, e in zip(net.parameters(), exact))


def test_apply_to_gradients_skips_missing_gradients_and_rejects_non_callables():
    p = nn.Parameter(torch.ones(3))
    apply_to_gradients([p], SignOnly())
    assert p.grad is None
    with pytest.raises(TypeError, match="callable"):
        apply_to_gradients([p], 0.5)


def test_feedback_linear_matches_linear_exactly_with_identity_feedback():
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: feedback_linear(*a, PowerSign(1.0)), (x, w, b))
    stacked = (torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True),
               torch.randn(3, 2, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: feedback_linear(*a, PowerSign(1.0)), stacked)
    with pytest.raises(ValueError, match="stack of weights"):
        feedback_linear(torch.randn(5, 4), stacked[1], stacked[2], SignOnly())


def test_feedback_linear_uses_the_transformed_weight_only_for_grad_x():
    torch.manual_seed(0)
    layer = FeedbackLinear(4, 3, feedback=SignOnly())
    reference = nn.Linear(4, 3)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(6, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), reference(x_ref)
    assert torch.equal(y, y_ref)
    g = torch.randn(6, 3)
    y.backward(g)
    y_ref.backward(g)
    assert torch.allclose(x.grad, g @ torch.sign(layer.weight))
    assert torch.allclose(layer.weight.grad, reference.weight.grad)
    assert torch.allclose(layer.bias.grad, reference.bias.grad)


def test_feedback_transform_draws_nothing_when_the_input_needs_no_gradient():
    flip = SignFlip(0.5, seed=0)
    layer = FeedbackLinear(4, 3, feedback=flip)
    state = flip.state_dict()
    layer(torch.randn(5, 4)).sum().backward()
    assert torch.equal(flip.generator.get_state(), state["generator"])
