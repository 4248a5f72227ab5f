"""BlackBox and the prober: ledger, batching, validation, retries, budget, state.

Tests that count a probing estimator's evaluations call by call pass
``calibrate=False``; calibration's own evaluations are tested in
``test_calibration.py``.
"""

import numpy as np
import pytest
import torch
from torch import nn

import blackgrad as bg
from blackgrad.estimators import SPSA, Exact, FiniteDifference, LeastSquares

A = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def linear(x):
    return x @ A.T.to(x.dtype)


def test_forward_counts_samples_and_returns_device_output():
    box = bg.BlackBox(linear, FiniteDifference())
    x = torch.randn(7, 4, dtype=torch.float64)
    y = box(x)
    assert torch.allclose(y, linear(x))
    assert (box.calls.forward, box.calls.probe, box.calls.total, box.calls.device_calls) == (7, 0, 7, 1)
    box.calls.reset()
    assert box.calls.total == 0 and box.calls.seconds == 0.0


def test_input_and_output_shapes_are_kept():
    def device(x):  # (B, 2, 3) -> (B, 3, 2)
        return x.transpose(1, 2) * 2

    box = bg.BlackBox(device, FiniteDifference(scheme="forward"))
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y = box(x)
    assert y.shape == (5, 3, 2)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0), atol=1e-6)


def test_numpy_device_keeps_dtype_and_device():
    seen = []

    def device(x):
        seen.append(type(x))
        return np.tanh(x).astype(np.float64)

    box = bg.BlackBox(device, FiniteDifference(), numpy=True)
    x = torch.randn(4, 3, requires_grad=True)
    y = box(x)
    assert y.dtype == torch.float32 and y.device == x.device
    y.sum().backward()
    assert seen[0] is np.ndarray
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-2)


def test_no_evaluation_for_gradients_nobody_needs():
    theta = torch.randn(12, dtype=torch.float64)

    def device(x, th):
        return x @ th.reshape(3, 4).T

    box = bg.BlackBox(device, FiniteDifference(), params=theta, calibrate=False)
    x = torch.randn(5, 4, dtype=torch.float64)  # x needs no gradient
    box(x).sum().backward()
    assert box.calls.probe == 2 * 12 * 5  # θ only
    box.calls.reset()
    box.params.requires_grad_(False)
    x.requires_grad_(True)
    box(x).sum().backward()
    assert box.calls.probe == 2 * 4 * 5  # x only
    box.calls.reset()
    with torch.no_grad():
        box(x)
    assert box.calls.probe == 0 and box.calls.forward == 5


def test_theta_gradient_is_summed_over_the_batch_and_probes_share_calls():
    theta = torch.randn(12, dtype=torch.float64)

    def device(x, th):
        return x @ th.reshape(3, 4).T

    box = bg.BlackBox(device, FiniteDifference(), params=theta, calibrate=False)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 3, dtype=torch.float64)
    box(x).backward(g)
    assert torch.allclose(box.params.grad, (g.T @ x.detach()).reshape(-1), atol=1e-8)
    assert torch.allclose(x.grad, g @ theta.reshape(3, 4), atol=1e-8)
    # 1 forward call; all x probes share θ: one call; θ probes: one call per (sign, coordinate)
    assert box.calls.device_calls == 1 + 1 + 2 * 12


def test_max_batch_splits_device_calls_and_ledger_stays_exact():
    sizes = []

    def device(x):
        sizes.append(x.shape[0])
        return linear(x)

    box = bg.BlackBox(device, SPSA(directions=3), max_batch=10, calibrate=False)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    assert max(sizes) <= 10
    assert sum(sizes) == box.calls.total == 8 + 2 * 3 * 8


def test_wrong_input_shape_is_reported():
    box = bg.BlackBox(linear, FiniteDifference(), in_shape=(4,), name="lens")
    with pytest.raises(bg.InputShapeError, match=r"'lens' expects inputs of shape \(B, 4\); got \(2, 5\)"):
        box(torch.randn(2, 5))


def test_wrong_output_shape_is_reported():
    box = bg.BlackBox(lambda x: x[:-1], FiniteDifference(), name="short")
    with pytest.raises(bg.DeviceOutputError, match=r"'short' returned shape \(2, 4\) for a forward batch of 3"):
        box(torch.randn(3, 4))


def test_output_shape_must_stay_the_same():
    calls = []

    def device(x):
        calls.append(1)
        return x if len(calls) == 1 else x[:, :2]

    box = bg.BlackBox(device, FiniteDifference())
    box(torch.randn(3, 4))
    with pytest.raises(bg.DeviceOutputError, match=r"expected \(3, 4\) like its earlier outputs"):
        box(torch.randn(3, 4))


def test_nan_output_is_an_error_not_a_gradient():
    def device(x):
        y = x.clone()
        y[1, 0] = float("nan")
        return y

    box = bg.BlackBox(device, FiniteDifference(), name="glitch")
    with pytest.raises(bg.DeviceOutputError, match=r"'glitch' returned NaN or Inf for 1 of 3 samples \(first at sample 1\)"):
        box(torch.randn(3, 2))
    assert box.calls.failed == 3 and box.calls.forward == 0


def test_device_that_raises_once_is_retried_and_counted():
    state = {"calls": 0}

    def flaky(x):
        state["calls"] += 1
        if state["calls"] == 2:  # the first probe call fails once
            raise TimeoutError("instrument did not answer")
        return linear(x)

    box = bg.BlackBox(flaky, FiniteDifference(scheme="forward"), retries=1, calibrate=False)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 3, dtype=torch.float64)
    box(x).backward(g)
    assert torch.allclose(x.grad, g @ A, atol=1e-6)
    assert (box.calls.forward, box.calls.probe, box.calls.failed) == (3, 12, 12)
    assert box.calls.total == 27


def test_device_that_keeps_raising_names_itself():
    def broken(x):
        raise OSError("laser interlock open")

    box = bg.BlackBox(broken, FiniteDifference(), retries=2, name="laser")
    with pytest.raises(bg.DeviceError, match=r"'laser' raised OSError: laser interlock open .*attempt 3 of 3"):
        box(torch.randn(2, 3))
    assert box.calls.failed == 6


def test_budget_stops_training_before_any_evaluation():
    box = bg.BlackBox(linear, FiniteDifference(), budget=30, name="dev", calibrate=False)
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    # the forward (4) and its backward (32) do not fit together: refused before the forward
    with pytest.raises(bg.BudgetExhausted, match=r"budget of 30 samples for 'dev' is spent: 0 used .* this forward needs 4 more and its backward pass 32"):
        box(x)
    assert box.calls.total == 0
    box.budget = None
    y = box(x)  # 4 evaluations
    box.budget = 30  # lowered between the forward and the backward: the backward is refused on its own
    with pytest.raises(bg.BudgetExhausted, match=r"budget of 30 samples for 'dev' is spent: 4 used .* needs 32 more"):
        y.sum().backward()
    assert box.calls.total == 4  # nothing was spent by the refused backward


def test_estimator_must_be_an_estimator():
    with pytest.raises(TypeError, match="estimator must be a blackgrad.estimators.Estimator"):
        bg.BlackBox(linear, "fd")


def test_exact_on_numpy_device_is_a_clear_error():
    box = bg.BlackBox(lambda x: np.tanh(x), Exact(), numpy=True, name="npdev")
    with pytest.raises(bg.DeviceOutputError, match="Exact estimator needs black box 'npdev' to be differentiable"):
        box(torch.randn(2, 3, requires_grad=True))


def test_blackbox_in_a_model_trains_with_an_optimiser():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4, dtype=torch.float64), bg.BlackBox(torch.tanh, LeastSquares()))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(64, 4, dtype=torch.float64)
    goal = torch.tanh(0.5 * x)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = ((model(x) - goal) ** 2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert model[1].calls.probe == 60 * 4 * 64


def test_state_dict_carries_estimator_state_and_ledger():
    # ungated, so that the first passes' gradients are passed and can be compared
    box = bg.BlackBox(linear, SPSA(directions=2, seed=3, gate=None))
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    state = box.state_dict()
    clone = bg.BlackBox(linear, SPSA(directions=2, seed=99, gate=None))
    clone.load_state_dict(state)
    assert clone.calls.total == box.calls.total and clone.in_shape == (4,)
    x1, x2 = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    box(x1).sum().backward()
    clone(x2).sum().backward()
    assert torch.equal(x1.grad, x2.grad)  # same generator state -> same probes


def test_numpy_device_editing_its_input_cannot_corrupt_the_model():
    def device(x):
        x -= 1.0  # an in-place edit of what the device was given
        return (x**2).sum(1, keepdims=True)

    box = bg.BlackBox(device, FiniteDifference(), numpy=True)
    x = torch.full((2, 1), 3.0, dtype=torch.float64, requires_grad=True)
    y = box(x)
    y.sum().backward()
    assert torch.equal(x.detach(), torch.full((2, 1), 3.0, dtype=torch.float64))
    assert torch.allclose(y, torch.full((2, 1), 4.0, dtype=torch.float64))
    assert torch.allclose(x.grad, torch.full((2, 1), 4.0, dtype=torch.float64), atol=1e-6)


def test_integer_inputs_are_rejected():
    box = bg.BlackBox(lambda x, th: x * th, FiniteDifference(), params=torch.tensor([0.7]), name="gain")
    with pytest.raises(TypeError, match="'gain' takes a floating-point batch, got torch.int64"):
        box(torch.ones(3, 1, dtype=torch.long))


def test_empty_batch_after_the_first_call():
    box = bg.BlackBox(linear, SPSA(directions=2))
    box(torch.randn(2, 4, dtype=torch.float64))
    x = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    y = box(x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4)


def test_a_step_too_small_for_the_dtype_raises_instead_of_a_zero_gradient():
    box = bg.BlackBox(torch.sin, SPSA(directions=2, step=1e-12))
    x = torch.randn(3, 2, requires_grad=True)  # float32: 1e-12 vanishes next to |x| ~ 1
    with pytest.raises(ValueError, match="a probe step of 1e-12 vanishes in torch.float32"):
        box(x).sum().backward()
    box = bg.BlackBox(torch.sin, FiniteDifference(step=1e-12))
    with pytest.raises(FloatingPointError, match="returned NaN or Inf gradients for black box 'sin'"):
        box(x).sum().backward()


def test_a_one_dimensional_batch_must_say_whether_it_holds_scalars():
    box = bg.BlackBox(torch.sin, FiniteDifference(), calibrate=False)
    with pytest.raises(bg.InputShapeError, match=r"got shape \(3,\): for one sample use x.unsqueeze\(0\)"):
        box(torch.randn(3))
    assert box.in_shape is None  # nothing was fixed by the refused call
    scalars = bg.BlackBox(torch.sin, FiniteDifference(), in_shape=(), calibrate=False)
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    scalars(x).sum().backward()
    assert torch.allclose(x.grad, torch.cos(x.detach()), atol=1e-6)


def test_a_two_dimensional_parameter_is_refused_instead_of_copied():
    weight = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"must be 1-D \(p,\), got shape \(3, 4\)"):
        bg.BlackBox(lambda x, th: x, params=weight)
    flat = nn.Parameter(torch.zeros(12))
    assert bg.BlackBox(lambda x, th: x, params=flat).params is flat  # the caller's own parameter is trained


def test_exact_handles_an_empty_batch_like_every_other_estimator():
    box = bg.BlackBox(torch.sin, Exact())
    box(torch.randn(3, 2, requires_grad=True)).sum().backward()
    x = torch.randn(0, 2, requires_grad=True)
    box(x).sum().backward()
    assert x.grad.shape == (0, 2) and box.calls.forward == 3


def test_half_precision_is_refused_for_estimators_that_difference_or_learn():
    from blackgrad.estimators import DigitalTwin, StraightThrough

    x = torch.randn(4, 3, dtype=torch.float16, requires_grad=True)
    for estimator in (FiniteDifference(), LeastSquares(), DigitalTwin(probes=0)):
        box = bg.BlackBox(torch.sin, estimator, calibrate=False)
        with pytest.raises(TypeError, match="too coarse for; cast the input to float32"):
            box(x)
        assert box.calls.total == 0
    surrogate = bg.BlackBox(torch.sin, StraightThrough())  # no differences, no model: half precision is fine
    surrogate(x).sum().backward()
    assert x.grad.dtype == torch.float16


def test_default_estimator_is_seeded_from_torch_global_generator():
    """Two boxes of one model get streams of their own; a model built again under manual_seed repeats."""
    from blackgrad.estimators import LearnedJacobian

    torch.manual_seed(0)
    first, second = bg.BlackBox(torch.tanh, calibrate=False), bg.BlackBox(torch.tanh, calibrate=False)
    torch.manual_seed(0)
    again = bg.BlackBox(torch.tanh, calibrate=False)
    assert isinstance(first.estimator, LearnedJacobian)
    assert first.estimator.generator.initial_seed() != second.estimator.generator.initial_seed()
    assert first.estimator.generator.initial_seed() == again.estimator.generator.initial_seed()
