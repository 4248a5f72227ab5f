"""Runs that survive: an exact budget, side-effect-free refusals, time-outs, honest counting,
and the silent wrong gradients closed (double backward, complex inputs, in-place devices,
inference mode).  Issue 10, items 1–7.
"""

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import blackgrad as bg
from blackgrad.estimators import (
    SPSA,
    Broyden,
    ComplexStep,
    DigitalTwin,
    Exact,
    FiniteDifference,
    LeastSquares,
    LearnedJacobian,
    StraightThrough,
    Unbiased,
)

A = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def linear(x):
    return x @ A.T.to(x.dtype)


def flaky(device, fail_at):
    """``device`` raising ``TimeoutError`` at the calls numbered in ``fail_at`` (from 1)."""
    count = {"calls": 0}

    def wrapped(*args):
        count["calls"] += 1
        if count["calls"] in fail_at:
            raise TimeoutError("instrument did not answer")
        return device(*args)

    return wrapped


def same_state(a, b):
    """Bit-for-bit equality of two (nested) state dicts; a ledger's wall time aside."""
    if isinstance(a, dict):
        keys = a.keys() - {"seconds"}
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b  # NaN
    return a == b


# ----------------------------------------------------------- item 1: exact budget
def test_the_issue_case_stays_within_its_budget_and_counts_exactly():
    # forward 2 + backward 2·4·2 = 16 probes, worst case (2 + 16)·2 = 36 > 28: refused whole, up front
    box = bg.BlackBox(flaky(linear, {2}), FiniteDifference(), max_batch=8, retries=1, budget=28, calibrate=False)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        bg.BudgetExhausted,
        match=r"0 used \(forward=0, probe=0, calibration=0, failed=0\), 28 remain, and this forward needs 2 more "
        r"and its backward pass 16 .*; 36 with the 1 retry per call the retry policy allows, the most it can spend; "
        r"nothing of this request was evaluated and no state was changed\. Raise the budget \(box\.budget = 36 or more\)",
    ):
        box(x)
    assert box.calls.total == 0 and box.calls.device_calls == 0
    box.budget = 36
    g = torch.randn(2, 3, dtype=torch.float64)
    box(x).backward(g)  # the first probe call fails once and is retried
    assert torch.allclose(x.grad, g @ A, atol=1e-6)
    ledger = box.calls
    assert (ledger.forward, ledger.probe, ledger.failed, ledger.total, ledger.device_calls) == (2, 16, 8, 26, 4)
    with pytest.raises(bg.BudgetExhausted, match=r"26 used .*, 10 remain, .*\(box\.budget = 62 or more\)"):
        box(x)
    assert box.calls.total == 26 and box.calls.device_calls == 4


def test_a_budget_is_never_exceeded_however_often_the_device_fails():
    box = bg.BlackBox(flaky(linear, set(range(2, 400, 3))), FiniteDifference(), max_batch=8, retries=2, budget=500, calibrate=False)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    steps = 0
    with pytest.raises(bg.BudgetExhausted, match="nothing of this request was evaluated"):
        for _ in range(100):
            box(x).sum().backward()
            steps += 1
            assert box.calls.total <= 500
    assert steps >= 1 and box.calls.failed > 0 and box.calls.total <= 500
    # what was refused is what the next step could spend at worst: (3 + 24)·3
    assert box.calls.total + 81 > 500


def test_the_first_step_is_checked_whole_calibration_included():
    from blackgrad.calibration import calibration_cost

    cost = calibration_cost(4, 8, 2)
    box = bg.BlackBox(torch.tanh, SPSA(), budget=cost + 4, name="lab")  # calibration and forward, no room for probes
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(bg.BudgetExhausted, match=rf"this calibration needs {cost} more and the step it belongs to 12 "):
        box(x)
    assert box.calls.total == 0 and box.profile is None
    box.budget = cost + 12
    box(x).sum().backward()
    assert (box.calls.calibration, box.calls.forward, box.calls.probe) == (cost, 4, 8)


def test_a_forward_without_gradient_reserves_nothing_for_a_backward():
    box = bg.BlackBox(linear, FiniteDifference(), budget=4, calibrate=False)
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        box(x)
    assert box.calls.total == 4


# ------------------------------------------- item 6: refusals are side-effect free
def device_with_knobs(x, theta):
    return torch.tanh(x * theta) + 0.1 * x.pow(2)


ESTIMATORS = {
    "fd": lambda: FiniteDifference(),
    "spsa": lambda: SPSA(directions=2, seed=3),
    "least-squares": lambda: LeastSquares(probes=2, seed=3),
    "broyden": lambda: Broyden(probes=1, gate=None, seed=3),
    "twin": lambda: DigitalTwin(hidden=(16,), updates=2, seed=3),
    "learned-jacobian": lambda: LearnedJacobian(updates=2, gate_rows=4, seed=3),
    "unbiased-spsa": lambda: Unbiased(SPSA(seed=4), seed=3),
    "unbiased-twin": lambda: Unbiased(DigitalTwin(hidden=(16,), updates=2, seed=4), seed=3),
}


def make_model(estimator):
    torch.manual_seed(0)
    box = bg.BlackBox(device_with_knobs, estimator, params=torch.ones(3), calibrate=False, retries=1)
    model = nn.Sequential(nn.Linear(3, 3), box)
    return model, box, torch.optim.SGD(model.parameters(), lr=0.1)


def train_step(model, optimiser, step):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
    optimiser.zero_grad()
    model(x).pow(2).sum().backward()
    optimiser.step()


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_running_out_of_budget_changes_nothing_and_a_redo_equals_an_uninterrupted_run(name):
    model, box, optimiser = make_model(ESTIMATORS[name]())
    for step in range(3):
        train_step(model, optimiser, step)
    reference = (model.state_dict(), box.estimator.state_dict(), box.calls.as_dict())

    model, box, optimiser = make_model(ESTIMATORS[name]())
    for step in range(2):
        train_step(model, optimiser, step)
    box.budget = box.calls.total + 1  # the third step does not fit
    before = (model.state_dict(), box.estimator.state_dict(), box.calls.as_dict(), optimiser.state_dict())
    with pytest.raises(bg.BudgetExhausted, match="1 remain, and this forward needs 4 more and its backward pass"):
        train_step(model, optimiser, 2)
    after = (model.state_dict(), box.estimator.state_dict(), box.calls.as_dict(), optimiser.state_dict())
    assert same_state(before, after)
    box.budget = None  # raise it and redo the step
    train_step(model, optimiser, 2)
    assert same_state((model.state_dict(), box.estimator.state_dict(), box.calls.as_dict()), reference)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_a_backward_refused_on_its_own_leaves_every_estimator_state_as_it_was(name):
    model, box, optimiser = make_model(ESTIMATORS[name]())
    train_step(model, optimiser, 0)
    out = model(torch.randn(4, 3))
    box.budget = box.calls.total  # lowered after the forward: its backward no longer fits
    state, ledger = box.estimator.state_dict(), box.calls.as_dict()
    with pytest.raises(bg.BudgetExhausted, match=r"0 remain, and this backward needs \d+ more.*zero the gradients first"):
        out.pow(2).sum().backward()
    assert same_state(box.estimator.state_dict(), state) and same_state(box.calls.as_dict(), ledger)


# ---------------------------------------------------------- item 2: double backward
def test_differentiating_an_estimated_gradient_again_is_a_clear_error():
    lin = nn.Linear(3, 3, dtype=torch.float64)
    box = bg.BlackBox(torch.tanh, FiniteDifference(), calibrate=False, name="lab")
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(box(lin(x)).sum(), x, create_graph=True)
    with pytest.raises(
        bg.NoGradientError,
        match=r"second derivative through black box 'lab' .* FiniteDifference gives first-order gradients only.*"
        r"Exact\(\) estimator .* create_graph=False",
    ):
        grad.pow(2).sum().backward()
    # a first derivative with create_graph=True is still right
    reference = torch.autograd.grad(torch.tanh(lin(x)).sum(), x)[0]
    assert torch.allclose(grad, reference, atol=1e-8)


def test_torch_func_gives_first_derivatives_and_refuses_second_ones():
    box = bg.BlackBox(torch.tanh, FiniteDifference(), calibrate=False, name="lab")
    x = torch.randn(3, 2, dtype=torch.float64)
    first = torch.func.grad(lambda t: box(t).sum())(x)  # torch.func differentiates with create_graph=True
    assert torch.allclose(first, 1 - torch.tanh(x) ** 2, atol=1e-8)
    with pytest.raises(bg.NoGradientError, match="second derivative through black box 'lab'"):
        torch.func.grad(lambda t: torch.func.grad(lambda u: box(u).sum())(t).sum())(x)  # it was silently 0


def test_double_backward_through_exact_is_right():
    def run(layer):
        torch.manual_seed(0)
        lin = nn.Linear(3, 3, dtype=torch.float64)
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(layer(lin(x)).sum(), x, create_graph=True)
        grad.pow(2).sum().backward()
        return lin.weight.grad, lin.bias.grad

    weight, bias = run(bg.BlackBox(torch.tanh, Exact()))
    weight_ref, bias_ref = run(torch.tanh)
    assert bias is not None and torch.allclose(bias, bias_ref) and torch.allclose(weight, weight_ref)


def test_gradiator_double_backward_is_right_in_torch_and_refused_from_numpy():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    cube = bg.gradiator(lambda t: t**3, lambda t, g: 3 * t**2 * g)
    (grad,) = torch.autograd.grad(cube(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert torch.allclose(second, 6 * x.detach())

    numpy_cube = bg.gradiator(lambda t: t**3, lambda t, g: 3 * t.detach().numpy() ** 2 * g.detach().numpy(), name="cube")
    (grad,) = torch.autograd.grad(numpy_cube(x).sum(), x, create_graph=True)
    assert torch.allclose(grad, 3 * x.detach() ** 2)
    with pytest.raises(bg.NoGradientError, match=r"second derivative through 'cube' .* numpy array.* create_graph=False"):
        grad.sum().backward()


# -------------------------------------------------------------- item 3: complex
HOLOMORPHIC = lambda z: z * z + 0.5 * z  # noqa: E731
NON_HOLOMORPHIC = lambda z: z * z.conj() + 1j * z.real  # noqa: E731


def torch_gradient(fun, z, loss):
    z = z.detach().clone().requires_grad_(True)
    loss(fun(z)).backward()
    return z.grad


@pytest.mark.parametrize("fun", [HOLOMORPHIC, NON_HOLOMORPHIC, lambda z: z.abs() ** 2], ids=["holomorphic", "non-holomorphic", "real-output"])
@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_finite_differences_give_torchs_complex_gradient(fun, scheme):
    z = torch.randn(4, 3, dtype=torch.complex128)
    weights = torch.randn(4, 3, dtype=torch.complex128)
    loss = lambda y: (y * weights).real.sum() if y.is_complex() else (y * weights.real).sum()  # noqa: E731
    box = bg.BlackBox(fun, FiniteDifference(scheme=scheme), calibrate=False)
    z_box = z.clone().requires_grad_(True)
    loss(box(z_box)).backward()
    tolerance = 1e-8 if scheme == "central" else 1e-6
    assert torch.allclose(z_box.grad, torch_gradient(fun, z, loss), atol=tolerance)
    assert box.calls.probe == (2 if scheme == "central" else 1) * 2 * 3 * 4  # two real coordinates per complex one


def test_least_squares_is_exact_on_complex_linear_maps_and_complex_knobs():
    M = torch.randn(3, 3, dtype=torch.complex128)
    fun = lambda z, theta: z @ M + z.conj() * theta  # noqa: E731  (not holomorphic in z)
    box = bg.BlackBox(fun, LeastSquares(), params=torch.randn(3, dtype=torch.complex128), calibrate=False)
    z = torch.randn(5, 3, dtype=torch.complex128, requires_grad=True)
    g = torch.randn(5, 3, dtype=torch.complex128)
    (box(z) * g).real.sum().backward()
    theta = box.params.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    (fun(z_ref, theta) * g).real.sum().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6) and torch.allclose(box.params.grad, theta.grad, atol=1e-6)


def test_spsa_on_complex_inputs_is_unbiased():
    z = torch.randn(2, 3, dtype=torch.complex128)
    box = bg.BlackBox(NON_HOLOMORPHIC, SPSA(directions=4000, seed=0, gate=None), calibrate=False)
    z_box = z.clone().requires_grad_(True)
    box(z_box).real.sum().backward()
    reference = torch_gradient(NON_HOLOMORPHIC, z, lambda y: y.real.sum())
    assert (z_box.grad - reference).abs().max() < 0.15 * reference.abs().max()


def test_a_learned_estimator_trains_on_complex_inputs():
    box = bg.BlackBox(HOLOMORPHIC, DigitalTwin(hidden=(16,), updates=2, gate=None), calibrate=False)
    for _ in range(2):
        z = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
        box(z).real.sum().backward()
        assert z.grad.dtype == torch.complex64 and bool(torch.isfinite(torch.view_as_real(z.grad)).all())
    assert box.estimator.sizes == (6, 6)
    # gated, a first pass withholds the complex gradient as it does a real one
    gated = bg.BlackBox(HOLOMORPHIC, DigitalTwin(hidden=(16,), updates=2), calibrate=False)
    z = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    gated(z).real.sum().backward()
    assert gated.estimator.withholds("inputs") and z.grad is None


@pytest.mark.parametrize("estimator", [StraightThrough(), ComplexStep()], ids=["straight-through", "complex-step"])
def test_estimators_that_cannot_take_complex_inputs_say_so_before_any_evaluation(estimator):
    box = bg.BlackBox(HOLOMORPHIC, estimator, name="field")
    with pytest.raises(TypeError, match=rf"'field': {type(estimator).__name__} cannot estimate gradients for complex inputs"):
        box(torch.randn(2, 3, dtype=torch.complex64, requires_grad=True))
    assert box.calls.total == 0


# ------------------------------------------------------- item 4: in-place devices
def test_a_torch_device_that_edits_its_inputs_in_place_cannot_corrupt_the_model():
    def vandal(x, theta):
        out = x * theta.mul_(2)[0]
        x.zero_()
        return out

    box = bg.BlackBox(vandal, FiniteDifference(), params=torch.ones(1, dtype=torch.float64), calibrate=False)
    upstream = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    activation = upstream * 1.0
    before = activation.detach().clone()
    y = box(activation)
    assert torch.equal(box.params.detach(), torch.ones(1, dtype=torch.float64))
    assert torch.equal(activation.detach(), before) and torch.equal(y, 2 * before)
    y.sum().backward()  # the probes get copies too
    assert torch.equal(box.params.detach(), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(upstream.grad, torch.full_like(before, 2.0), atol=1e-6)


@pytest.mark.parametrize(
    "edit",
    [
        lambda x: x.add_(1.0),
        lambda x: torch.sin(x, out=x),
        lambda x: x.numpy().__setitem__((0, 0), 7.0),  # through a numpy view: no version counter moves
        lambda x: x.reshape(-1)[1:3].fill_(7.0),  # through a view of the input
    ],
    ids=["add_", "out=", "numpy-view", "view-fill_"],
)
def test_the_default_copy_keeps_every_kind_of_in_place_edit_from_the_model(edit):
    # the prober's copy is copy-on-write on CPU: whatever way the device writes, it writes its own memory
    def device(x):
        out = 2 * x
        edit(x)
        return out

    box = bg.BlackBox(device, FiniteDifference(), calibrate=False)
    upstream = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    activation = upstream * 1.0
    before = activation.detach().clone()
    y = box(activation)
    assert torch.equal(activation.detach(), before) and torch.equal(y, 2 * before)
    y.sum().backward()  # the probe rows the estimator keeps are kept from the device too
    assert torch.allclose(upstream.grad, torch.full_like(before, 2.0), atol=1e-6)


def test_an_in_place_device_differentiated_by_exact_gives_the_right_gradient():
    box = bg.BlackBox(lambda x: x.mul_(3), Exact())
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


# ------------------------------------------------------- item 5: inference mode
@pytest.mark.parametrize(
    "make",
    [  # ungated, so that each backward pass passes a gradient to check
        lambda: DigitalTwin(hidden=(16,), updates=2, gate=None),
        lambda: LearnedJacobian(updates=2, gate=None),
        lambda: Unbiased(DigitalTwin(hidden=(16,), updates=2, gate=None), gate=None),
    ],
    ids=["twin", "learned-jacobian", "unbiased-twin"],
)
def test_inference_mode_forwards_are_observed_and_training_goes_on(make):
    box = bg.BlackBox(torch.tanh, make(), calibrate=False)
    twin = box.estimator.inner if isinstance(box.estimator, Unbiased) else box.estimator
    twin = twin.prior if twin.prior is not None else twin
    for step in range(3):  # inference first (nothing built yet), then after training
        with torch.inference_mode():
            y = box(torch.randn(4, 3))
        assert torch.is_inference(y)
        x = torch.randn(4, 3, requires_grad=True)
        box(x).sum().backward()
        assert bool(torch.isfinite(x.grad).all())
    assert box.calls.forward == 24 and len(twin.values) == 24  # every forward batch is free data
    assert not any(torch.is_inference(v) for v in twin.values.data.values())


# ------------------------------------------------- item 7: time-outs and counting
def test_a_call_that_hangs_once_is_abandoned_counted_and_retried():
    release = threading.Event()
    finished = threading.Event()
    calls = {"n": 0}

    def sticky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            release.wait(10)  # hangs until the test lets it go
            finished.set()
        return x * 2

    # a generous timeout, so that the retry answers within it even on a loaded machine
    box = bg.BlackBox(sticky, FiniteDifference(), timeout=0.5, retries=1, calibrate=False)
    x = torch.randn(3, 2)
    assert torch.equal(box(x), x * 2)
    assert (box.calls.forward, box.calls.failed, box.calls.device_calls) == (3, 3, 2)
    assert box.calls.seconds >= 0.5
    release.set()  # the abandoned call now returns: its late result is discarded, never counted
    assert finished.wait(10)
    time.sleep(0.05)
    assert (box.calls.forward, box.calls.failed, box.calls.total, box.calls.device_calls) == (3, 3, 6, 2)


def test_a_device_that_keeps_hanging_raises_device_timeout():
    release = threading.Event()
    box = bg.BlackBox(lambda x: release.wait(10) and x, FiniteDifference(), timeout=0.1, retries=1, name="laser")
    try:
        with pytest.raises(bg.DeviceTimeout, match=r"'laser' did not answer within its timeout of 0.1 s \(a forward call of 2 samples; attempt 2 of 2\)"):
            box(torch.randn(2, 3))
    finally:
        release.set()
    assert (box.calls.failed, box.calls.forward, box.calls.device_calls) == (4, 0, 2)
    assert issubclass(bg.DeviceTimeout, bg.DeviceError) and issubclass(bg.DeviceTimeout, TimeoutError)


def test_ctrl_c_while_waiting_for_the_device_counts_the_call_and_leaves_its_worker_behind():
    import _thread

    def interrupted(x):
        if not hasattr(interrupted, "done"):
            interrupted.done = True
            _thread.interrupt_main()  # Ctrl-C arrives while the caller waits for this call
            time.sleep(0.3)
        return x * 2

    box = bg.BlackBox(interrupted, FiniteDifference(), timeout=5.0, calibrate=False)
    x = torch.randn(3, 2)
    with pytest.raises(KeyboardInterrupt):
        box(x)
    assert (box.calls.failed, box.calls.total, box.calls.device_calls) == (3, 3, 1)
    assert box.prober._worker is None  # retired: the next call must not queue behind the interrupted one
    assert torch.equal(box(x), x * 2)
    assert (box.calls.forward, box.calls.total, box.calls.device_calls) == (3, 6, 2)


def test_exact_builds_its_graph_in_the_worker_thread_of_a_timeout():
    box = bg.BlackBox(torch.sin, Exact(), timeout=5.0)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    box(x).sum().backward()
    assert torch.allclose(x.grad, torch.cos(x.detach()))
    with torch.no_grad():  # and no graph when the caller wants none
        assert not box(x).requires_grad


def test_a_black_box_with_a_timeout_is_copied_and_pickled_without_its_worker_thread():
    import copy
    import pickle

    box = bg.BlackBox(torch.tanh, FiniteDifference(), timeout=5.0, calibrate=False)
    x = torch.randn(3, 2)
    box(x)
    twin = copy.deepcopy(box)
    assert torch.equal(twin(x), torch.tanh(x)) and twin.prober._worker is not box.prober._worker
    assert torch.equal(pickle.loads(pickle.dumps(box))(x), torch.tanh(x))


def test_timeout_is_checked():
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds or None, got 0"):
        bg.BlackBox(linear, timeout=0)
    with pytest.raises(ValueError, match=r"timeout=1.0 contradicts the retry policy's timeout=2.0"):
        bg.BlackBox(linear, retries=bg.RetryPolicy(timeout=2.0), timeout=1.0)
    assert bg.BlackBox(linear, retries=bg.RetryPolicy(retries=2), timeout=1.0).prober.retry.timeout == 1.0


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["direct", "worker"])
@pytest.mark.parametrize("error", [ValueError("bad knob"), KeyboardInterrupt()], ids=["outside-policy", "interrupt"])
def test_samples_of_a_call_that_raised_outside_the_retry_policy_are_counted(error, timeout):
    def device(x):
        raise error

    policy = bg.RetryPolicy(retries=2, exceptions=(OSError,))
    box = bg.BlackBox(device, FiniteDifference(), retries=policy, timeout=timeout)
    with pytest.raises(type(error)):
        box(torch.randn(5, 3))
    assert (box.calls.failed, box.calls.total, box.calls.device_calls) == (5, 5, 1)


def test_a_device_that_promised_not_to_edit_its_inputs_and_did_is_caught_and_cannot_touch_theta():
    def vandal(x, theta):
        out = x * theta.mul_(2)[0]
        x.zero_()
        return out

    box = bg.BlackBox(vandal, FiniteDifference(), params=torch.ones(1, dtype=torch.float64), calibrate=False, copy_inputs=False)
    activation = torch.randn(3, 2, dtype=torch.float64, requires_grad=True) * 1.0
    with pytest.raises(bg.DeviceError, match="edited its input in place .* copy_inputs=False"):
        box(activation)
    assert torch.equal(box.params.detach(), torch.ones(1, dtype=torch.float64))  # θ was a copy
    assert (box.calls.failed, box.calls.forward) == (3, 0)


def test_a_device_that_keeps_its_promise_gets_its_inputs_uncopied_and_the_same_results():
    seen = []

    def device(x):
        seen.append(x)
        return torch.sin(x)

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for copy in (True, False):
        box = bg.BlackBox(device, SPSA(directions=2, gate=None), copy_inputs=copy, calibrate=False)
        xi = x.detach().clone().requires_grad_(True)
        y = box(xi)
        assert (seen[-1].data_ptr() == xi.data_ptr()) is (not copy)  # the forward batch itself, uncopied
        y.sum().backward()
        results.append((y.detach(), xi.grad, box.calls.total))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    with pytest.raises(TypeError, match="copy_inputs must be True or False"):
        bg.BlackBox(device, copy_inputs="no")


def test_a_broken_promise_is_caught_even_when_the_device_then_raises_and_would_be_retried():
    def vandal(x):
        x.mul_(100)
        raise OSError("glitch")

    box = bg.BlackBox(vandal, FiniteDifference(), calibrate=False, copy_inputs=False, retries=1)
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(bg.DeviceError, match="edited its input in place"):
        box(x)
    # not retried on the edited input: one call, its samples counted once, as failed
    assert (box.calls.device_calls, box.calls.failed, box.calls.forward) == (1, 3, 0)


def test_with_a_timeout_the_device_gets_a_copy_even_with_copy_inputs_false():
    seen = []

    def device(x):
        seen.append(x)
        return torch.sin(x)

    x = torch.randn(4, 3, dtype=torch.float64)
    bg.BlackBox(device, FiniteDifference(), calibrate=False, copy_inputs=False, timeout=30)(x)
    assert seen[-1].data_ptr() != x.data_ptr()  # an abandoned call could edit it after every check
