"""Estimators × problems with known Jacobians, costs checked against the ledger."""

import math

import pytest
import torch

import blackgrad as bg
from blackgrad.estimators import (
    SPSA,
    Broyden,
    ComplexStep,
    Exact,
    FiniteDifference,
    LeastSquares,
    StraightThrough,
)

gen = torch.Generator().manual_seed(7)
W = torch.randn(3, 4, dtype=torch.float64, generator=gen)
THETA = torch.randn(12, dtype=torch.float64, generator=gen)


def linear(x):
    return x @ W.T.to(x.dtype)


def smooth(x):
    # complex-aware (for ComplexStep): tanh, sin and matmul are analytic
    return torch.tanh(x @ W.T.to(x.dtype)) + torch.sin(x[:, :3]) * x[:, 1:]


def with_theta(x, theta):
    return torch.tanh(x @ theta.reshape(3, 4).T) * torch.cos(theta[:3])


PROBLEMS = {
    "linear": (linear, None),
    "smooth": (smooth, None),
    "theta": (with_theta, THETA),
}


def reference(fun, theta, x, g):
    """Exact VJP by autograd: (grad_x, grad_theta)."""
    x = x.detach().requires_grad_(True)
    inputs = [x]
    if theta is not None:
        theta = theta.detach().clone().requires_grad_(True)
        inputs.append(theta)
    y = fun(x) if theta is None else fun(x, theta)
    grads = torch.autograd.grad(y, inputs, g)
    return grads[0], (grads[1] if theta is not None else None)


def expected_probes(box, d, m, batch):
    # A differentiable box (BlackBox(fun, Exact()), or differentiable=True) keeps the forward graph: no probes.
    return 0 if box.differentiable else box.estimator.probe_cost(d, m, batch)


def estimate(estimator, fun, theta, x, g):
    box = bg.BlackBox(fun, estimator, params=theta)
    x = x.detach().clone().requires_grad_(True)
    box(x).backward(g)
    return x.grad, (box.params.grad if theta is not None else None), box


# estimator factory, tolerance (max abs error relative to the reference's max)
DETERMINISTIC = {
    "exact": (lambda: Exact(), 1e-13),
    "fd-central": (lambda: FiniteDifference(), 1e-8),
    "fd-forward": (lambda: FiniteDifference(scheme="forward"), 1e-6),
    "complex-step": (lambda: ComplexStep(), 1e-13),
    "least-squares": (lambda: LeastSquares(scheme="central"), 1e-8),
}


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_estimators_match_autograd(name, problem):
    make, tol = DETERMINISTIC[name]
    fun, theta = PROBLEMS[problem]
    x = torch.randn(5, 4, dtype=torch.float64)
    g = torch.randn(5, 3, dtype=torch.float64)
    ref_x, ref_theta = reference(fun, theta, x, g)
    est_x, est_theta, box = estimate(make(), fun, theta, x, g)
    assert (est_x - ref_x).abs().max() <= tol * ref_x.abs().max()
    if theta is not None:
        assert (est_theta - ref_theta).abs().max() <= tol * ref_theta.abs().max()
    d = 4 + (0 if theta is None else 12)
    assert box.calls.probe == expected_probes(box, d, 3, 5)
    assert box.calls.forward == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: FiniteDifference(),
        lambda: FiniteDifference(scheme="forward"),
        lambda: ComplexStep(),
        # ungated: with the gate shut at a first pass, the gradients would be withheld (None)
        lambda: SPSA(directions=3, gate=None),
        lambda: SPSA(directions=2, antithetic=False, gate=None),
        lambda: LeastSquares(),
        lambda: LeastSquares(probes=2, scheme="central"),
        lambda: Broyden(probes=2, gate=None),
        lambda: Exact(),
        lambda: StraightThrough(surrogate=with_theta),
    ],
    ids=["fd", "fd-forward", "complex-step", "spsa", "spsa-one-sided", "ls", "ls-2-central", "broyden", "exact", "straight-through"],
)
def test_ledger_agrees_with_cost_formula_and_dtype_is_kept(make):
    estimator = make()
    box = bg.BlackBox(with_theta, estimator, params=THETA.float())
    x = torch.randn(6, 4, requires_grad=True)
    y = box(x)
    y.backward(torch.randn_like(y))
    assert box.calls.forward == 6
    assert box.calls.probe == expected_probes(box, 4 + 12, 3, 6)
    assert x.grad.dtype == torch.float32 and box.params.grad.dtype == torch.float32
    assert torch.isfinite(x.grad).all() and torch.isfinite(box.params.grad).all()


def test_estimator_vjp_cost_formula_when_called_directly():
    from blackgrad.estimators import VJPQuery
    from blackgrad.prober import Prober

    prober = Prober(linear, (4,))
    alpha = torch.randn(5, 4, dtype=torch.float64)
    y = prober.forward(alpha, None)
    query = VJPQuery(alpha, y, torch.randn_like(y), torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))
    grad = Exact().vjp(prober, query)
    assert torch.allclose(grad, query.grad_out @ W)
    assert prober.ledger.probe == Exact().probe_cost(4, 3, 5) == 5


def test_least_squares_recovers_a_random_linear_map_from_n_probes():
    n, m = 12, 7
    A = torch.randn(m, n, dtype=torch.float64)
    box = bg.BlackBox(lambda x: x @ A.T, LeastSquares(step=1.0))
    x = torch.randn(3, n, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(m, dtype=torch.float64)
    # The VJP against each basis vector gives one row of A.
    rows = []
    for i in range(m):
        x.grad = None
        box(x).backward(eye[i].expand(3, m))
        rows.append(x.grad[0].clone())
    recovered = torch.stack(rows)
    assert (recovered - A).abs().max() < 1e-12
    assert box.calls.probe == m * n * 3  # n probes per sample, one-sided


def test_least_squares_with_fewer_probes_is_exact_on_the_probed_subspace():
    A = torch.randn(3, 10, dtype=torch.float64)
    box = bg.BlackBox(lambda x: x @ A.T, LeastSquares(probes=4, step=1.0))
    x = torch.randn(1, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 3, dtype=torch.float64)
    box(x).backward(g)
    true = g @ A
    # the minimum-norm solution is the projection of the true VJP on the probed span
    assert x.grad.norm() < true.norm()
    cosine = torch.nn.functional.cosine_similarity(x.grad, true).item()
    assert 0.2 < cosine < 1.0


def test_least_squares_neighbors_spend_no_probes():
    A = torch.randn(3, 4, dtype=torch.float64)
    box = bg.BlackBox(lambda x: x @ A.T, LeastSquares(probes=0, neighbors=6))
    x = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(16, 3, dtype=torch.float64)
    box(x).backward(g)
    assert box.calls.probe == 0
    assert (x.grad - g @ A).abs().max() < 1e-9  # a linear map: every secant is exact


def test_spsa_is_unbiased_within_a_statistical_bound():
    # 4000 copies of one point: each row gets an independent single-direction estimate.
    rows = 4000
    x0 = torch.randn(1, 4, dtype=torch.float64)
    g0 = torch.randn(1, 3, dtype=torch.float64)
    for distribution in ("rademacher", "gaussian"):
        box = bg.BlackBox(smooth, SPSA(directions=1, distribution=distribution, seed=11, gate=None))
        x = x0.expand(rows, 4).clone().requires_grad_(True)
        box(x).backward(g0.expand(rows, 3))
        exact, _ = reference(smooth, None, x0, g0)
        mean, std = x.grad.mean(0), x.grad.std(0)
        z = (mean - exact[0]).abs() / (std / math.sqrt(rows))
        assert (z < 4.5).all(), f"{distribution}: z-scores {z.tolist()}"


def test_spsa_error_falls_as_directions_grow():
    x = torch.randn(200, 4, dtype=torch.float64)
    g = torch.randn(200, 3, dtype=torch.float64)
    exact, _ = reference(smooth, None, x, g)
    errors = {}
    for k in (1, 4, 16, 64):
        est, _, _ = estimate(SPSA(directions=k, seed=5, gate=None), smooth, None, x, g)
        errors[k] = ((est - exact).norm(dim=1) / exact.norm(dim=1)).mean().item()
    assert errors[4] < errors[1] and errors[16] < errors[4] and errors[64] < errors[16]
    # variance ~ 1/k: 64x the directions, about 8x less error
    assert errors[64] < errors[1] / 4


def test_spsa_theta_directions_are_shared_so_each_is_one_call():
    box = bg.BlackBox(with_theta, SPSA(directions=3), params=THETA, calibrate=False)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    assert box.calls.device_calls == 1 + 2 * 3  # forward + (±) × directions


def test_broyden_converges_to_a_linear_map():
    A = torch.randn(3, 5, dtype=torch.float64)
    estimator = Broyden(probes=1, step=1e-3)
    box = bg.BlackBox(lambda x: x @ A.T, estimator)
    for _ in range(20):
        x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
        box(x).sum().backward()
    assert (estimator.jacobian - A).abs().max() < 1e-6


def test_broyden_learns_from_forward_data_alone():
    A = torch.randn(3, 5, dtype=torch.float64)
    estimator = Broyden(probes=0, observe_forward=True)
    box = bg.BlackBox(lambda x: x @ A.T, estimator)
    for _ in range(20):
        box(torch.randn(16, 5, dtype=torch.float64))
    assert (estimator.jacobian - A).abs().max() < 1e-6
    assert box.calls.probe == 0


def test_straight_through_identity_and_surrogate():
    def threshold(x):
        return (x > 0).to(x.dtype)

    box = bg.BlackBox(threshold, StraightThrough(derivative=lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))))
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    s = torch.sigmoid(x.detach())
    assert torch.allclose(x.grad, s * (1 - s))
    assert box.calls.probe == 0
    box = bg.BlackBox(threshold, StraightThrough())
    x.grad = None
    box(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_straight_through_errors():
    box = bg.BlackBox(linear, StraightThrough())
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="needs as many outputs as inputs; the device maps 4 numbers to 3"):
        box(x).sum().backward()
    with pytest.raises(ValueError, match="unknown derivative 'sigmoid'"):
        StraightThrough(derivative="sigmoid")


def test_complex_step_needs_complex_arithmetic():
    box = bg.BlackBox(lambda x: linear(x).abs(), ComplexStep(), name="magnitude")
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(bg.DeviceOutputError, match="ComplexStep needs black box 'magnitude' to keep complex"):
        box(x).sum().backward()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FiniteDifference(scheme="backward"), "unknown scheme 'backward'; choose one of 'central', 'forward'"),
        (lambda: FiniteDifference(step=-1.0), "step must be a positive number or None, got -1.0"),
        (lambda: SPSA(directions=0), "directions must be a positive int, got 0"),
        (lambda: SPSA(distribution="uniform"), "unknown distribution 'uniform'"),
        (lambda: LeastSquares(probes=0), "needs probes > 0 or neighbors > 0"),
        (lambda: LeastSquares(scheme="backward"), "unknown scheme 'backward'"),
        (lambda: Broyden(probes=0), "learns nothing unless observe_forward=True"),
        (lambda: ComplexStep(step=0), "step must be a positive number"),
    ],
)
def test_unknown_or_bad_options_are_rejected(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


# Broyden without its gate: a first call is gated shut, which would hide the seed's effect
@pytest.mark.parametrize("make", [lambda s: SPSA(directions=2, seed=s, gate=None), lambda s: LeastSquares(probes=2, seed=s), lambda s: Broyden(seed=s, gate=None)])
def test_same_seed_same_gradient(make):
    x = torch.randn(4, 4, dtype=torch.float64)
    g = torch.randn(4, 3, dtype=torch.float64)
    a, _, _ = estimate(make(1), smooth, None, x, g)
    b, _, _ = estimate(make(1), smooth, None, x, g)
    c, _, _ = estimate(make(2), smooth, None, x, g)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_scheme_vocabulary_with_the_older_antithetic_spelling():
    from blackgrad.estimators import Unbiased

    assert SPSA().scheme == "central" and SPSA(scheme="forward").antithetic is False
    assert SPSA(antithetic=False).scheme == "forward"
    assert Unbiased(SPSA()).scheme == "forward" and Unbiased(SPSA(), scheme="central").antithetic
    for bad in ("no", 1, None.__class__):
        with pytest.raises(ValueError, match="antithetic must be True or False"):
            SPSA(antithetic=bad)
    with pytest.raises(ValueError, match="contradicts"):
        SPSA(scheme="forward", antithetic=True)
    with pytest.raises(ValueError, match="unknown scheme"):
        Unbiased(SPSA(), scheme="two-sided")


def test_a_state_saved_by_another_kind_of_estimator_is_refused_before_anything_changes():
    from blackgrad.estimators import DigitalTwin, LearnedJacobian, Unbiased

    with pytest.raises(ValueError, match="saved by a SPSA; it cannot be loaded into a LeastSquares"):
        LeastSquares().load_state_dict(SPSA().state_dict())
    with pytest.raises(ValueError, match="saved by a DigitalTwin; it cannot be loaded into a LearnedJacobian"):
        LearnedJacobian().load_state_dict(DigitalTwin().state_dict())
    wrapper = Unbiased(SPSA(seed=3), seed=5)
    before = wrapper.generator.get_state().clone()
    with pytest.raises(ValueError, match="saved by a Broyden"):
        wrapper.load_state_dict(Unbiased(Broyden(), seed=7).state_dict())
    assert torch.equal(wrapper.generator.get_state(), before)  # the inner mismatch was found first
