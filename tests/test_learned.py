"""Learned estimators: convergence on known Jacobians, linearity, unbiasedness, state."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import blackgrad as bg
from blackgrad.estimators import SPSA, DigitalTwin, LearnedJacobian, LearnedVJP, Unbiased
from blackgrad.estimators.learned_vjp import BilinearVJP
from blackgrad.nets import ConstantJacobian, LogLinExp

N, M = 6, 4
gen = torch.Generator().manual_seed(3)
A = torch.randn(M, N, generator=gen)
W = torch.randn(M, N, generator=gen) / N**0.5


def linear(x):
    return x @ A.T.to(x.dtype)


def smooth(x):
    return torch.tanh(x @ W.T.to(x.dtype)) + 0.3 * torch.sin(2 * x[:, :M])


def exact_vjp(fun, x, g):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fun(x), x, g)
    return grad


def train(fun, estimator, steps, batch=32, seed=0):
    """Drive a BlackBox with random inputs and grad_out; return per-step mean cosines."""
    torch.manual_seed(seed)
    box = bg.BlackBox(fun, estimator)
    cosines = []
    for _ in range(steps):
        x = torch.randn(batch, N, requires_grad=True)
        y = box(x)
        g = torch.randn_like(y)
        y.backward(g)
        passed = torch.zeros_like(x) if x.grad is None else x.grad  # withheld by a shut gate: cosine 0
        cosines.append(torch.nn.functional.cosine_similarity(passed, exact_vjp(fun, x, g)).mean().item())
    return cosines, box


# raw inputs: the convergence thresholds below were set for models without input features
SMALL = dict(hidden=(32, 32), lr=3e-3, batch_size=128, embedding=None)


def test_learned_jacobian_with_structure_recovers_the_matrix():
    estimator = LearnedJacobian(model=ConstantJacobian(M, N), lr=0.05, updates=4)
    cosines, box = train(linear, estimator, steps=150)
    assert cosines[-1] > 0.999
    recovered = estimator.model.matrix.detach()
    assert (recovered - A).abs().max() / A.abs().max() < 0.01
    assert box.calls.probe == 150 * 32  # one one-sided probe per sample


@pytest.mark.parametrize(
    "make, steps",
    [
        (lambda: LearnedJacobian(**SMALL), 120),
        (lambda: LearnedJacobian(rank=4, **SMALL), 120),
        (lambda: LearnedVJP(rank=16, **SMALL), 120),
        (lambda: DigitalTwin(probes=0, **SMALL), 300),  # learns from values only: slower to pin down slopes
    ],
    ids=["jacobian", "jacobian-lowrank", "vjp", "twin"],
)
def test_learned_estimators_converge_on_a_linear_map(make, steps):
    cosines, box = train(linear, make(), steps=steps)
    assert sum(cosines[-10:]) / 10 > 0.999, cosines[-10:]
    assert sum(cosines[:3]) / 3 < 0.99  # it really learned: it did not start there


MEDIUM = dict(hidden=(64, 64), lr=3e-3, batch_size=128, updates=8)


@pytest.mark.parametrize(
    "make, floor",
    [
        (lambda: LearnedJacobian(**MEDIUM), 0.95),
        (lambda: LearnedVJP(rank=32, **MEDIUM), 0.92),
        # one probe's correction adds variance: a lower floor, still far above the start
        (lambda: Unbiased(LearnedVJP(rank=32, **MEDIUM)), 0.85),
    ],
    ids=["jacobian", "vjp", "unbiased-vjp"],
)
def test_online_training_raises_the_cosine_on_a_nonlinear_device(make, floor):
    cosines, _ = train(smooth, make(), steps=150)
    early, late = sum(cosines[:10]) / 10, sum(cosines[-10:]) / 10
    assert late > early + 0.2 and late > floor, (early, late)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(-100, 100, allow_nan=False),
)
def test_learned_vjp_is_linear_in_grad_out(seed, scale):
    torch.manual_seed(seed)
    model = BilinearVJP(N, M, rank=8, hidden=(16,)).double()
    alpha = torch.randn(5, N, dtype=torch.float64)
    g1, g2 = torch.randn(5, M, dtype=torch.float64), torch.randn(5, M, dtype=torch.float64)
    v1, v2 = model(alpha, g1), model(alpha, g2)
    tol = 1e-12 * (1 + abs(scale)) * max(v1.abs().max().item(), v2.abs().max().item(), 1.0)
    assert (model(alpha, scale * g1) - scale * v1).abs().max() <= tol
    assert (model(alpha, g1 + g2) - (v1 + v2)).abs().max() <= tol


def test_unbiased_wrapper_is_unbiased_even_with_a_wrong_model():
    # An inner model trained never (updates=0) and deliberately wrong: a random bilinear net.
    inner = LearnedVJP(rank=8, hidden=(16,), updates=0, seed=1)
    estimator = Unbiased(inner, directions=1, antithetic=True, seed=2)
    rows = 4000
    x0 = torch.randn(1, N, dtype=torch.float64)
    g0 = torch.randn(1, M, dtype=torch.float64)
    box = bg.BlackBox(smooth, estimator)
    x = x0.expand(rows, N).clone().requires_grad_(True)
    box(x).backward(g0.expand(rows, M))
    exact = exact_vjp(smooth, x0, g0)[0]
    wrong = inner.predict_vjp(x0, g0)[0]
    assert (wrong - exact).abs().max() > 0.3  # the model really is wrong
    mean, sem = x.grad.mean(0), x.grad.std(0) / rows**0.5
    assert ((mean - exact).abs() < 4.5 * sem).all()
    assert box.calls.probe == estimator.probe_cost(N, M, rows) == 2 * rows


def test_unbiased_variance_shrinks_as_the_inner_model_improves():
    def spread(estimator, reps=400):
        torch.manual_seed(0)
        x0 = torch.randn(1, N)
        g0 = torch.randn(1, M)
        box = bg.BlackBox(linear, estimator)
        x = x0.expand(reps, N).clone().requires_grad_(True)
        box(x).backward(g0.expand(reps, M))
        return (x.grad - exact_vjp(linear, x0, g0)).norm(dim=1).mean().item()

    plain = spread(SPSA(directions=1, antithetic=False))
    inner = LearnedJacobian(model=ConstantJacobian(M, N), lr=0.05)
    train(linear, Unbiased(inner), steps=150)
    inner.updates = 0  # freeze, then measure the corrected estimate's error
    corrected = spread(Unbiased(inner, seed=5))
    assert corrected < 0.05 * plain, (corrected, plain)


def test_fractional_probes_cost_what_they_say():
    estimator = LearnedVJP(rank=8, hidden=(16,), probes=0.25)
    _, box = train(linear, estimator, steps=3, batch=40)
    assert box.calls.probe == 3 * 10 == 3 * estimator.probe_cost(N, M, 40)
    estimator = LearnedJacobian(hidden=(16,), probes=1.5, scheme="central")
    _, box = train(linear, estimator, steps=2, batch=40)
    assert box.calls.probe == 2 * 2 * 60


def test_digital_twin_pretrains_on_a_stated_budget_and_learns_online_for_free():
    twin = DigitalTwin(hidden=(32, 32), lr=3e-3, batch_size=64, probes=0, seed=0)
    box = bg.BlackBox(smooth, twin)
    history = box.pretrain(torch.randn(512, N), epochs=30)
    assert box.calls.probe == 512 and box.calls.forward == 0
    assert history[-1] < 0.5 * history[0]
    x = torch.randn(64, N, requires_grad=True)
    y = box(x)
    y.backward(torch.ones_like(y))
    assert box.calls.probe == 512  # the twin's backward is free


def test_frozen_twin_does_not_learn_online():
    twin = DigitalTwin(hidden=(16,), online=False)
    box = bg.BlackBox(smooth, twin)
    box.pretrain(torch.randn(64, N), epochs=2)
    before = copy.deepcopy(twin.model.state_dict())
    box(torch.randn(16, N)).sum()
    assert all(torch.equal(before[k], v) for k, v in twin.model.state_dict().items())


@pytest.mark.parametrize(
    "make",
    [
        # ungated: the gradients compared are the models' own, not the zeros of a shut gate
        lambda: LearnedJacobian(hidden=(16,), seed=4, gate=None),
        lambda: LearnedVJP(rank=8, hidden=(16,), seed=4, gate=None),
        lambda: DigitalTwin(hidden=(16,), probes=0.5, slope_weight=1.0, seed=4, gate=None),
        lambda: Unbiased(LearnedVJP(rank=8, hidden=(16,), seed=4, gate=None), seed=9, gate=None),
    ],
    ids=["jacobian", "vjp", "twin", "unbiased"],
)
def test_save_load_continue_matches_an_uninterrupted_run(make):
    def steps(box, count, seed):
        torch.manual_seed(seed)
        grads = []
        for _ in range(count):
            x = torch.randn(16, N, requires_grad=True)
            y = box(x)
            y.backward(torch.randn_like(y))
            grads.append(x.grad)
        return grads

    uninterrupted = bg.BlackBox(smooth, make())
    steps(uninterrupted, 5, seed=1)
    reference = steps(uninterrupted, 5, seed=2)

    first = bg.BlackBox(smooth, make())
    steps(first, 5, seed=1)
    checkpoint = copy.deepcopy(first.state_dict())
    resumed = bg.BlackBox(smooth, make())
    resumed.load_state_dict(checkpoint)
    continued = steps(resumed, 5, seed=2)
    for a, b in zip(reference, continued):
        assert torch.equal(a, b)
    assert resumed.calls.total == uninterrupted.calls.total


def test_log_lin_exp_computes_signed_monomials():
    layer = LogLinExp(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [1.0, -1.0]]))
        layer.bias.zero_()
    z = torch.tensor([[-2.0, 3.0], [0.5, -4.0]])
    expected = torch.stack([z[:, 0] * z[:, 1], z[:, 0] ** 2, z[:, 0] / z[:, 1]], dim=1)
    assert torch.allclose(layer(z), expected, rtol=1e-5)
    # zeros are clamped to eps: finite output, a positive power of zero vanishes
    out = layer(torch.tensor([[0.0, 2.0]]))
    assert torch.isfinite(out).all() and out[0, 0].abs() < 1e-5


def test_bad_learned_options_are_rejected():
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        LearnedJacobian(loss="huber")
    with pytest.raises(ValueError, match="unknown train_grad 'ones'"):
        LearnedVJP(train_grad="ones")
    with pytest.raises(ValueError, match="probes must be a non-negative number"):
        LearnedVJP(probes=-1)
    with pytest.raises(TypeError, match="inner must be an Estimator"):
        Unbiased("spsa")


def test_fourier_features_and_embedding_option():
    from blackgrad.nets import FourierFeatures

    features = FourierFeatures(3, (1.0, 2.0))
    z = torch.tensor([[0.5, -1.0, 2.0]])
    out = features(z)
    assert out.shape == (1, 3 * 5) and features.out_features == 15
    assert torch.allclose(out[0, :3], z[0])
    assert torch.allclose(out[0, 3:9], torch.sin(torch.stack([z[0] * 1.0, z[0] * 2.0], -1)).flatten())
    twin = DigitalTwin(hidden=(8,), embedding=FourierFeatures(N, (1.0,)))
    bg.BlackBox(smooth, twin)(torch.randn(4, N))
    assert isinstance(twin.model[0], FourierFeatures)
    with pytest.raises(TypeError, match="out_features"):
        LearnedVJP(embedding=torch.nn.Identity())


@pytest.mark.parametrize(
    "make",
    [
        lambda twin: DigitalTwin(model=twin, step=0.3, probes=1.0, slope_weight=1.0, updates=0),
        lambda twin: DigitalTwin(model=twin, step=0.3, scheme="central", probes=1.0, slope_weight=1.0, updates=0),
        # a wrapper's probes, with the wrapper's step and scheme, not the twin's
        lambda twin: Unbiased(DigitalTwin(model=twin, slope_weight=1.0, updates=0), step=0.2, antithetic=True),
        lambda twin: Unbiased(DigitalTwin(model=twin, slope_weight=1.0, updates=0), step=0.2),
    ],
    ids=["own-forward", "own-central", "unbiased-antithetic", "unbiased-one-sided"],
)
def test_a_twin_equal_to_the_device_fits_its_measured_slopes_exactly(make):
    # The twin's slope is the same difference quotient the device was probed with, so a
    # perfect twin has zero slope error even at a step large enough to make the
    # derivative differ from the measured quotient.
    estimator = make(_Module(smooth))
    twin = estimator.inner if isinstance(estimator, Unbiased) else estimator
    box = bg.BlackBox(smooth, estimator)
    x = torch.randn(16, N, requires_grad=True)
    y = box(x)
    y.backward(torch.randn_like(y))
    rows = twin.buffer.sample(len(twin.buffer), twin.generator)
    fitted = twin.twin_slope(rows["alpha"], rows["direction"], rows["step"], rows["central"])
    assert torch.allclose(fitted, rows["slope"], atol=1e-5)
    derivative = torch.func.jvp(smooth, (rows["alpha"],), (rows["direction"],))[1]
    assert not torch.allclose(derivative, rows["slope"], atol=1e-3)
    twin.slope_fit = "jvp"  # the exact derivative instead
    jvp = twin.twin_slope(rows["alpha"], rows["direction"], rows["step"], rows["central"])
    assert torch.allclose(jvp, derivative, atol=1e-6)


class _Module(torch.nn.Module):
    """``fun`` as a twin: a module with one parameter (an optimiser needs one), equal to ``fun``."""

    def __init__(self, fun):
        super().__init__()
        self.fun = fun
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * self.fun(x)


def test_slope_fit_is_checked():
    with pytest.raises(ValueError, match="unknown slope_fit 'secant'"):
        DigitalTwin(slope_weight=1.0, slope_fit="secant")


def test_one_sided_twin_slopes_take_the_general_formula_bit_for_bit():
    """Rows all one-sided skip the central case's torch.where: the same slopes and parameter
    gradients, bit for bit, as the formula for mixed rows; a mixed batch still takes each row's scheme."""
    torch.manual_seed(0)
    twin = DigitalTwin(seed=0)
    alpha = torch.rand(6, 4) * 2 - 1
    twin.prepare(4, 3, alpha)
    direction = torch.randint(0, 2, (6, 4)).float() * 2 - 1
    step = torch.full((6,), 0.02)
    central = torch.zeros(6, dtype=torch.bool)

    def general(central: torch.Tensor) -> torch.Tensor:
        h = step.unsqueeze(1)
        start = torch.where(central.unsqueeze(1), alpha - h * direction, alpha)
        ends = twin.model(torch.cat([start, alpha + h * direction])).reshape(2, 6, -1)
        return (ends[1] - ends[0]) / torch.where(central.unsqueeze(1), 2 * h, h)

    grads = []
    for slope in (twin.twin_slope(alpha, direction, step, central), general(central)):
        twin.model.zero_grad()
        slope.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in twin.model.parameters()])
    assert torch.equal(twin.twin_slope(alpha, direction, step, central), general(central))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    mixed = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        assert torch.equal(twin.twin_slope(alpha, direction, step, mixed), general(mixed))
        h = 0.02
        ends = twin.model(torch.cat([alpha - h * direction, alpha + h * direction]))
        assert torch.allclose(twin.twin_slope(alpha, direction, step, mixed)[0], (ends[6] - ends[0]) / (2 * h))
