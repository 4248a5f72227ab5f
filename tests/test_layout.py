"""One owner for the (x, θ) layout: the query joins, groups and splits; the prober owns ledger and budget."""

from __future__ import annotations

import pytest
import torch

import blackgrad as bg
from blackgrad.estimators import (
    VJP,
    Broyden,
    DigitalTwin,
    Estimator,
    FiniteDifference,
    LeastSquares,
    SPSA,
    StraightThrough,
    Unbiased,
    VJPQuery,
)
from blackgrad.prober import Prober

W = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def with_theta(x, theta):
    return torch.tanh(x @ theta.reshape(3, 4).T) + x[:, :3]


@pytest.mark.parametrize(
    "make",
    [
        FiniteDifference,
        lambda: FiniteDifference(scheme="forward"),
        lambda: SPSA(directions=3, gate=None),
        lambda: LeastSquares(scheme="central"),
        # ungated, so that the first pass's gradients are passed (a shut gate withholds them)
        lambda: Broyden(probes=2, gate=None),
        lambda: DigitalTwin(gate=None),
        lambda: Unbiased(SPSA(gate=None)),
    ],
)
def test_built_in_estimators_hand_the_prober_probes_grouped_by_theta(make, monkeypatch):
    """No whole α rows reach a box's prober: every probe comes with its θ group, counted as before."""
    box = bg.BlackBox(with_theta, make(), params=W.reshape(-1).clone(), calibrate=False)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = box(x)

    def refuse(self, *args, **kwargs):
        raise AssertionError("whole α rows reached the prober")

    monkeypatch.setattr(Prober, "__call__", refuse)
    y.sum().backward()
    estimator = box.estimator
    assert box.calls.probe == estimator.probe_cost(4 + 12, 3, 5)
    assert x.grad is not None and box.params.grad is not None
    assert torch.isfinite(x.grad).all() and torch.isfinite(box.params.grad).all()


class RowEstimator(Estimator):
    """A user's estimator that knows nothing of groups: central differences on whole rows ``prober(rows)``."""

    def vjp(self, prober, query):
        alpha, index = query.alpha, query.active_index()
        k, batch = index.numel(), query.batch
        h = 1e-6 * alpha[:, index].abs().clamp(min=1.0).T  # relative, as FiniteDifference(step=1e-6)
        plus = alpha.expand(k, batch, -1).clone()
        plus[torch.arange(k), :, index] += h
        minus = alpha.expand(k, batch, -1).clone()
        minus[torch.arange(k), :, index] -= h
        f_plus, f_minus = prober(torch.cat([plus, minus]).reshape(2 * k * batch, -1)).reshape(2, k, batch, -1)
        grad = torch.zeros_like(alpha)
        grad[:, index] = torch.einsum("bm,kbm->bk", query.grad_out, (f_plus - f_minus) / (2 * h).unsqueeze(-1))
        return grad

    def probe_cost(self, d, m, batch):
        return 2 * d * batch


def test_an_estimator_that_calls_the_prober_with_whole_rows_gets_the_same_calls_and_gradients():
    theta = W.reshape(-1).clone()
    x = torch.randn(6, 4, dtype=torch.float64)
    g = torch.randn(6, 3, dtype=torch.float64)
    results = []
    for estimator in (RowEstimator(), FiniteDifference(step=1e-6, scheme="central")):
        calls = []

        def device(x, theta):
            calls.append((x.clone(), theta.clone()))
            return with_theta(x, theta)

        box = bg.BlackBox(device, estimator, params=theta.clone(), calibrate=False)
        xi = x.clone().requires_grad_(True)
        box(xi).backward(g)
        results.append((calls, xi.grad, box.params.grad, box.calls.as_dict()))
    (rows_calls, rows_gx, rows_gt, rows_ledger), (grouped_calls, gx, gt, ledger) = results
    # the same device calls: all x probes in one call at θ, one call per (sign, θ coordinate)
    assert len(rows_calls) == len(grouped_calls) == 1 + 1 + 2 * 12
    for (xa, ta), (xb, tb) in zip(rows_calls, grouped_calls):
        assert torch.equal(ta, tb) and xa.shape == xb.shape
    assert torch.allclose(rows_gx, gx, atol=1e-6) and torch.allclose(rows_gt, gt, atol=1e-6)
    assert {k: v for k, v in rows_ledger.items() if k != "seconds"} == {k: v for k, v in ledger.items() if k != "seconds"}


def test_a_query_from_parts_joins_rows_only_when_read_and_splits_the_answer():
    x = torch.randn(4, 3)
    theta = torch.randn(2)
    y, g = torch.randn(4, 5), torch.randn(4, 5)
    query = VJPQuery.from_parts(x, theta, y, g, need_x=True, need_theta=True)
    assert (query.n, query.p, query.batch, query.dim, query.n_active) == (3, 2, 4, 5, 5)
    assert query._alpha is None  # nothing joined yet
    assert torch.equal(query.alpha, torch.cat([x, theta.expand(4, -1)], 1))
    assert torch.equal(query.active, torch.ones(5, dtype=torch.bool))
    assert torch.equal(query.shared, torch.tensor([False] * 3 + [True] * 2))
    grad = torch.randn(4, 5)
    grad_x, grad_theta = query.gradient(grad)
    assert torch.equal(grad_x, grad[:, :3]) and torch.allclose(grad_theta, grad[:, 3:].sum(0))
    # the same answer in parts
    parts_x, parts_theta = query.gradient(VJP(grad[:, :3], grad[:, 3:].sum(0)))
    assert torch.equal(parts_x, grad_x) and torch.equal(parts_theta, grad_theta)
    # as rows for an estimator that works row by row: the θ part spread evenly, the same sum
    rows = query.rows(VJP(grad[:, :3], grad[:, 3:].sum(0)))
    assert rows.shape == (4, 5) and torch.allclose(rows[:, 3:].sum(0), grad_theta)
    with pytest.raises(ValueError, match=r"VJP.theta has shape \(3,\); expected \(2,\)"):
        query.gradient(VJP(grad[:, :3], torch.zeros(3)))
    with pytest.raises(ValueError, match=r"a gradient of shape \(4, 4\); expected \(4, 5\) \(batch, 3 inputs \+ 2 params\)"):
        query.gradient(torch.zeros(4, 4))
    only_x = VJPQuery.from_parts(x, theta, y, g, need_x=True, need_theta=False)
    assert only_x.n_active == 3 and only_x.gradient(grad)[1] is None and only_x.direction_groups(2) is None


def test_straight_through_surrogate_answers_theta_summed_without_a_row_of_its_own():
    theta = W.reshape(-1).clone()
    box = bg.BlackBox(with_theta, StraightThrough(surrogate=with_theta), params=theta.clone(), calibrate=False)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 3, dtype=torch.float64)
    box(x).backward(g)
    xr, tr = x.detach().clone().requires_grad_(True), theta.clone().requires_grad_(True)
    with_theta(xr, tr).backward(g)
    assert torch.allclose(x.grad, xr.grad) and torch.allclose(box.params.grad, tr.grad)
    assert box.calls.probe == 0


def test_the_box_shows_the_probers_ledger_and_budget():
    box = bg.BlackBox(torch.sin, SPSA(), budget=50, calibrate=False)
    assert box.calls is box.prober.ledger and box.calls.total == 0  # before the first batch too
    box.budget = 40
    assert box.prober.budget == 40
    box(torch.randn(4, 3, requires_grad=True)).sum().backward()
    assert box.calls is box.prober.ledger and box.calls.total == 4 + 2 * 4
    state = box.state_dict()
    other = bg.BlackBox(torch.sin, SPSA(), calibrate=False)
    other.load_state_dict(state)
    assert other.calls.total == 12 and other.calls is other.prober.ledger


def test_exact_called_with_a_prober_differentiates_x_and_theta_as_the_device_takes_them():
    from blackgrad.estimators import Exact

    theta = W.reshape(-1).clone()
    prober = Prober(with_theta, (4,), n_params=12)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = prober.forward(x, theta)
    g = torch.randn_like(y)
    query = VJPQuery.from_parts(x, theta, y, g)
    grad_x, grad_theta = query.gradient(Exact().vjp(prober, query))
    xr, tr = x.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    with_theta(xr, tr).backward(g)
    assert torch.allclose(grad_x, xr.grad) and torch.allclose(grad_theta, tr.grad)
    assert prober.ledger.probe == Exact().probe_cost(16, 3, 5) == 5


def test_estimators_and_devices_follow_one_rule_for_seeds():
    from blackgrad.devices import Noisy, Linear

    for make in (lambda seed: SPSA(seed=seed).generator, lambda seed: Noisy(Linear(3, 2), seed=seed).generator):
        assert torch.equal(torch.rand(3, generator=make(7)), torch.rand(3, generator=make(7)))
        fresh = make(None)  # None: a fresh random stream, for either
        assert isinstance(fresh, torch.Generator)
        for bad in (True, 1.5, "7"):
            with pytest.raises(TypeError, match="seed must be an int or None"):
                make(bad)


def test_a_differentiable_box_is_what_exact_gives_and_takes_no_estimator():
    from blackgrad.estimators import Exact

    theta = W.reshape(-1).clone()
    x = torch.randn(5, 4, dtype=torch.float64)
    g = torch.randn(5, 3, dtype=torch.float64)
    grads = []
    for box in (
        bg.BlackBox(with_theta, params=theta.clone(), differentiable=True),
        bg.BlackBox(with_theta, Exact(), params=theta.clone()),
    ):
        assert box.differentiable and isinstance(box.estimator, Exact)
        xi = x.clone().requires_grad_(True)
        box(xi).backward(g)
        grads.append((xi.grad, box.params.grad))
        assert (box.calls.forward, box.calls.probe) == (5, 0)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert not bg.BlackBox(with_theta, SPSA(), params=theta.clone()).differentiable
    # second derivatives through a differentiable box are torch's own
    box = bg.BlackBox(torch.sin, differentiable=True)
    xi = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(box(xi).sum(), xi, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), xi)
    assert torch.allclose(second, -torch.sin(xi.detach()))
    with pytest.raises(ValueError, match="differentiable=True has torch differentiate the device itself"):
        bg.BlackBox(torch.sin, SPSA(), differentiable=True)
    with pytest.raises(TypeError, match="differentiable must be True or False"):
        bg.BlackBox(torch.sin, differentiable=1)


def test_grouped_probes_go_one_call_per_theta_in_theta_order_and_no_rows_make_no_call():
    from blackgrad.estimators.base import evaluate_grouped

    calls = []

    def device(x, theta):
        calls.append(theta.clone())
        return x[:, :3] * theta[0]

    prober = Prober(device, (4,), n_params=2)
    x = torch.randn(6, 4, dtype=torch.float64)
    thetas = torch.tensor([[2.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    group = torch.tensor([0, 1, 2, 0, 1, 2])
    rows = torch.cat([x, thetas[group]], 1)
    y = evaluate_grouped(prober.evaluate, rows, 4, thetas[0], group)
    # groups 0 and 2 share their θ: one call for them, and the calls go in θ's order
    assert [c.tolist() for c in calls] == [[1.0, 0.0], [2.0, 0.0]]
    assert torch.equal(y, x[:, :3] * thetas[group, :1]) and prober.ledger.probe == 6
    assert torch.equal(prober(rows), y) and [c.tolist() for c in calls[2:]] == [[1.0, 0.0], [2.0, 0.0]]  # whole rows alike
    empty = evaluate_grouped(prober.evaluate, rows[:0], 4, thetas[0], group[:0])
    assert empty.shape == (0, 3) and len(calls) == 4


def test_rows_without_a_group_are_evaluated_at_their_own_theta_and_differentiated_through_it():
    """A user estimator that forgets ``group``: never the query's θ for rows whose θ moved."""
    x = torch.randn(5, 4, dtype=torch.float64)
    theta = W.reshape(-1).clone()
    y = with_theta(x, theta)
    g = torch.randn(5, 3, dtype=torch.float64)
    query = VJPQuery.from_parts(x, theta, y, g)
    prober = Prober(with_theta, (4,), n_params=12)
    moved = query.alpha.clone()
    moved[:, 4:] += 0.1  # every row's θ moved alike
    assert torch.allclose(query.evaluate(prober, moved), with_theta(x, theta + 0.1))
    mixed = moved.clone()
    mixed[0, 4:] -= 0.1  # the first row back at θ: the rows disagree, and are grouped by θ
    expected = torch.cat([with_theta(x[:1], theta), with_theta(x[1:], theta + 0.1)])
    assert torch.allclose(query.evaluate(prober, mixed), expected)
    # differentiable: the graph runs through the rows' θ columns
    rows = moved.clone().requires_grad_(True)
    query.evaluate(prober, rows, differentiable=True).sum().backward()
    reference = moved.clone().requires_grad_(True)
    with_theta(reference[:, :4], reference[0, 4:]).sum().backward()
    assert rows.grad[:, 4:].abs().sum() > 0
    assert torch.allclose(rows.grad.sum(0), reference.grad.sum(0))


def test_a_differentiable_box_takes_half_precision_and_a_wrong_estimator_is_a_type_error():
    box = bg.BlackBox(torch.tanh, differentiable=True)
    x = torch.randn(4, 3, dtype=torch.float16, requires_grad=True)
    box(x).sum().backward()  # torch differentiates the device: no difference in float16 to refuse
    assert torch.allclose(x.grad.float(), 1 - torch.tanh(x.detach().float()) ** 2, atol=1e-2)
    with pytest.raises(TypeError, match="estimator must be a blackgrad.estimators.Estimator"):
        bg.BlackBox(torch.tanh, "spsa", differentiable=True)


def test_a_prober_without_an_input_shape_says_so_and_exact_gives_zeros_for_an_ignored_input():
    with pytest.raises(ValueError, match="does not know the shape of one input sample"):
        Prober(torch.tanh, None).forward(torch.randn(2, 3), None)
    from blackgrad.estimators import Exact

    def ignores_x(x, theta):
        return theta.expand(x.shape[0], 2) * 2.0

    x, theta = torch.randn(3, 4, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    y, g = ignores_x(x, theta), torch.ones(3, 2, dtype=torch.float64)
    prober = Prober(ignores_x, (4,), n_params=2)
    answer = Exact().vjp(prober, VJPQuery.from_parts(x, theta, y, g))
    assert torch.equal(answer.x, torch.zeros_like(x)) and torch.equal(answer.theta, torch.full((2,), 6.0, dtype=torch.float64))
