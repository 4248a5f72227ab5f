"""The learned estimators' lifecycle, fidelity monitor and gate."""

import copy

import pytest
import torch
from torch import nn

import blackgrad as bg
from blackgrad.estimators import DigitalTwin, LearnedJacobian, LearnedVJP
from blackgrad.nets import ConstantJacobian

N, M = 6, 4
A = torch.randn(M, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def linear(x):
    return x @ A.T


def batch(seed, rows=32):
    return torch.randn(rows, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def structured(matrix, **options):
    model = ConstantJacobian(M, N).double()
    with torch.no_grad():
        model.matrix.copy_(matrix)
    return LearnedJacobian(model=model, step=1e-4, **options)


def responses(model, rows):
    predicted = (torch.einsum("bmd,bd->bm", model(rows["alpha"]), rows["direction"]) * rows["grad_out"]).sum(1)
    measured = (rows["grad_out"] * rows["slope"]).sum(1)
    return nn.functional.cosine_similarity(predicted, measured, dim=0).item()


def test_fidelity_is_scored_on_new_rows_before_the_model_trains_on_them():
    start = 0.3 * A.flip(1)
    estimator = structured(start, lr=0.05, updates=200, gate=None)
    untouched = structured(start)
    box = bg.BlackBox(linear, estimator, calibrate=False)
    box(batch(1).requires_grad_(True)).backward(batch(2)[:, :M])
    rows = {k: v[: len(estimator.buffer)] for k, v in estimator.buffer.data.items()}
    trained = responses(estimator.model, rows)
    assert estimator.fidelity.rows == 32
    assert trained > 0.99  # after 200 updates on these very rows the model fits them
    # the score is that of the model as it was when the rows arrived
    assert estimator.fidelity.cosine == pytest.approx(responses(untouched.model, rows), abs=1e-9)
    assert estimator.fidelity.cosine < trained - 0.2


def test_the_gate_keeps_a_wrong_model_from_moving_the_upstream_layers():
    torch.manual_seed(0)
    upstream = nn.Linear(N, N).double()
    wrong = structured(-A, updates=0, gate_rows=32)  # anti-aligned with the device, and never trained
    model = nn.Sequential(upstream, bg.BlackBox(linear, wrong, calibrate=False))
    for step in range(3):
        model(batch(step)).pow(2).sum().backward()
    assert wrong.fidelity.cosine < -0.99
    # withheld, not zeroed: the optimiser skips the upstream layer and its state stays put
    assert upstream.weight.grad is None and upstream.bias.grad is None
    # without the gate the same wrong model pushes the upstream layer the wrong way
    open_gate = structured(-A, updates=0, gate=None)
    loose = nn.Sequential(copy.deepcopy(upstream), bg.BlackBox(linear, open_gate, calibrate=False))
    loose[0].zero_grad()
    loose(batch(0)).pow(2).sum().backward()
    assert loose[0].weight.grad.abs().max().item() > 0


def test_a_withheld_gradient_leaves_the_optimiser_state_where_it_was():
    torch.manual_seed(0)
    upstream, readout = nn.Linear(N, N).double(), nn.Linear(M, 1).double()
    good = structured(A.clone(), updates=0, gate_rows=64)  # shut after 32 rows, open from 64
    model = nn.Sequential(upstream, bg.BlackBox(linear, good, calibrate=False), readout)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    before = copy.deepcopy(upstream.state_dict())
    optimiser.zero_grad()
    model(batch(0)).pow(2).sum().backward()
    optimiser.step()
    assert good.withholds("inputs") and upstream.weight.grad is None and upstream.bias.grad is None
    # a zero would have stepped Adam for the upstream layer; None leaves it no state at all
    assert upstream.weight not in optimiser.state and upstream.bias not in optimiser.state
    assert all(torch.equal(value, upstream.state_dict()[key]) for key, value in before.items())
    assert optimiser.state[readout.weight]["step"] == 1  # the layer after the device trained
    optimiser.zero_grad()
    model(batch(1)).pow(2).sum().backward()
    optimiser.step()
    assert not good.withholds("inputs") and upstream.weight.grad is not None
    # the gate opened onto a fresh Adam state: the upstream layer's first step, bias-corrected as one
    assert optimiser.state[upstream.weight]["step"] == 1 and optimiser.state[readout.weight]["step"] == 2


def test_the_gate_opens_for_a_good_model_once_enough_rows_were_scored():
    good = structured(A.clone(), updates=0, gate_rows=64)
    box = bg.BlackBox(linear, good, calibrate=False)
    x = batch(3).requires_grad_(True)
    box(x).backward(torch.ones(32, M, dtype=torch.float64))
    assert good.gate_factor() == 0.0 and x.grad is None  # 32 of 64 rows: still closed, the gradient withheld
    x.grad = None
    box(x).backward(torch.ones(32, M, dtype=torch.float64))
    assert good.fidelity.cosine > 0.999 and good.gate_factor() == 1.0
    assert torch.allclose(x.grad, torch.ones(32, M, dtype=torch.float64) @ A, atol=1e-6)
    assert box.fidelity is good.fidelity or box.fidelity == good.fidelity


def _twin_of(matrix):
    """A twin that is the linear map ``matrix`` itself and never trains."""
    model = nn.Linear(N, M, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(matrix)
    return DigitalTwin(model=model, updates=0, step=1e-4, gate_rows=32)


@pytest.mark.parametrize(
    "prior, correction, share",
    [(1.0, -2.0, 0.0), (0.5, 0.5, 1.0), (0.5, 1.5, 1 / 3)],
    ids=["a-correction-that-only-harms", "a-correction-that-completes-the-prior", "an-overshooting-correction"],
)
def test_the_correction_passes_in_the_share_that_fits_held_out_rows(prior, correction, share):
    # the device is A; the prior's twin is prior·A and the correction correction·A, neither trained:
    # the held-out rows fit the share κ with prior + κ·correction = A wherever that lies in [0, 1]
    estimator = structured(correction * A, updates=0, gate_rows=32, prior=_twin_of(prior * A))
    box = bg.BlackBox(linear, estimator, calibrate=False)
    for step in range(6):
        x = batch(step).requires_grad_(True)
        g = batch(step + 10)[:, :M]
        box(x).backward(g)
    assert estimator.correction_share.weights()[0].item() == pytest.approx(share, abs=1e-6)
    expected = g @ ((prior + share * correction) * A)
    assert torch.allclose(x.grad, expected, atol=1e-6)
    if share > 0:  # the gate judged what passes: the device itself, once the share was fitted
        assert torch.allclose(x.grad, g @ A, atol=1e-6) and estimator.gate_factor("inputs") == 1.0
    restored = structured(correction * A, prior=_twin_of(prior * A))
    restored.load_state_dict(copy.deepcopy(estimator.state_dict()))
    assert torch.equal(restored.correction_share.weights(), estimator.correction_share.weights())


def test_theta_is_scored_on_its_batch_sum_where_each_row_is_mostly_noise():
    from blackgrad.estimators.fidelity import FidelityMonitor

    generator = torch.Generator().manual_seed(3)
    n, p, rows = 4, 3, 64
    shared = torch.tensor([False] * n + [True] * p)
    summed, by_row = FidelityMonitor(), FidelityMonitor()
    for _ in range(40):
        # every row moves θ along the batch's one direction, as a learned estimator's θ rows do
        theta = torch.randint(0, 2, (p,), generator=generator).double() * 2 - 1
        direction = torch.cat([torch.zeros(rows, n, dtype=torch.float64), theta.expand(rows, p)], 1)
        vjp = 1.0 + 0.3 * torch.randn(rows, p, generator=generator, dtype=torch.float64)  # a common θ gradient
        truth = vjp @ theta
        measured = truth + 5.0 * torch.randn(rows, generator=generator, dtype=torch.float64)  # noise swamps each row
        weight = torch.rand(rows, generator=generator, dtype=torch.float64) + 0.5
        summed.score(truth, measured, direction, shared, weight=weight)
        by_row.score(truth, measured, direction, shared)
    # a perfect model: its θ gradient, summed as it is passed upstream, is the true one
    assert summed.part("params").cosine > 0.9 and summed.factor("params") == 1.0
    assert by_row.part("params").cosine < 0.5 and by_row.factor("params") == 0.0
    assert summed.part("params").rows == by_row.part("params").rows == 40 * rows


def test_fidelity_survives_state_dict():
    estimator = structured(0.5 * A, updates=1)
    box = bg.BlackBox(linear, estimator, calibrate=False)
    box(batch(4).requires_grad_(True)).sum().backward()
    clone = bg.BlackBox(linear, structured(0.5 * A, updates=1), calibrate=False)
    clone.load_state_dict(box.state_dict())
    assert clone.fidelity == box.fidelity and clone.estimator.gate_factor() == estimator.gate_factor()


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DigitalTwin(hidden=(8,), probes=1.0, slope_weight=1.0, updates=3, step=1e-3, **kw),
        lambda **kw: DigitalTwin(hidden=(8,), updates=3, probes=0, **kw),
        lambda **kw: LearnedJacobian(hidden=(8,), updates=3, step=1e-3, **kw),
        lambda **kw: LearnedVJP(hidden=(8,), rank=4, updates=3, step=1e-3, **kw),
    ],
)
@pytest.mark.parametrize("warmup, steps", [(0, [3, 3, 3]), (2, [12, 12, 3]), (None, [12, 12, 12])])
def test_each_backward_pass_takes_exactly_the_stated_optimiser_steps(make, warmup, steps):
    """``updates`` per backward pass, ``WARMUP_FACTOR`` (4) times as many in the first ``warmup``.

    By default 40 passes for the learned Jacobian and VJP (and their twin prior), none for a twin of its own.
    """
    estimator = make() if warmup is None else make(warmup=warmup)
    if warmup is None and isinstance(estimator, DigitalTwin):
        assert estimator.warmup == 0
        steps = [3, 3, 3]
    elif warmup is None:
        assert estimator.warmup == 40
    box = bg.BlackBox(torch.tanh, estimator, calibrate=False)
    taken = []
    for step in range(3):
        before = len(estimator.train_losses)
        box(batch(step).requires_grad_(True)).sum().backward()
        taken.append(len(estimator.train_losses) - before)
    # forward data and probe rows are only stored; training happens once, in the backward pass
    assert taken == steps
    for prior in filter(None, [estimator.prior]):  # a twin prior warms up with its estimator
        assert prior.warmup == estimator.warmup and prior.passes == 3


def test_the_warm_up_resumes_where_a_saved_state_left_it():
    estimator = LearnedJacobian(hidden=(8,), updates=2, warmup=2, step=1e-3)
    box = bg.BlackBox(torch.tanh, estimator, calibrate=False)
    box(batch(0).requires_grad_(True)).sum().backward()
    restored = LearnedJacobian(hidden=(8,), updates=2, warmup=2, step=1e-3)
    restored.load_state_dict(estimator.state_dict())
    assert restored.passes == 1
    box = bg.BlackBox(torch.tanh, restored, calibrate=False)
    for step, expected in ((1, 8), (2, 2)):
        before = len(restored.train_losses)
        box(batch(step).requires_grad_(True)).sum().backward()
        assert len(restored.train_losses) - before == expected


@pytest.mark.parametrize("bad", [-1, 2.5, True, "40"])
def test_bad_warmups_are_refused(bad):
    with pytest.raises(ValueError, match="warmup must be a non-negative int"):
        LearnedJacobian(warmup=bad)


def test_a_twin_without_probes_is_not_gated_and_says_it_has_no_fidelity():
    twin = DigitalTwin(hidden=(8,), updates=1, probes=0)
    box = bg.BlackBox(torch.tanh, twin, calibrate=False)
    x = batch(5).requires_grad_(True)
    box(x).sum().backward()
    assert twin.fidelity is None and twin.gate_factor() == 1.0 and x.grad.abs().max().item() > 0


@pytest.mark.parametrize("bad", [(0.3, 0.1), (0.1,), "on", (float("nan"), 0.5), (True, 0.5), (-2.0, 0.5)])
def test_bad_gates_are_refused(bad):
    with pytest.raises(ValueError, match="gate must be None or two cosines"):
        LearnedJacobian(gate=bad)


def test_bad_gate_rows_are_refused():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="gate_rows"):
            LearnedVJP(gate_rows=bad)


def test_inputs_and_parameters_are_scored_and_gated_apart():
    """A model right about the inputs and wrong about θ passes the input gradient and withholds θ's."""
    P = 3
    B_ = torch.randn(M, P, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def device(x, theta):
        return x @ A.T + theta @ B_.T

    model = ConstantJacobian(M, N + P).double()
    with torch.no_grad():
        model.matrix.copy_(torch.cat([A, -B_], 1))
    estimator = LearnedJacobian(model=model, step=1e-4, updates=0, gate_rows=16)
    box = bg.BlackBox(device, estimator, params=torch.zeros(P, dtype=torch.float64), calibrate=False)
    for seed in range(3):
        x = batch(seed).requires_grad_(True)
        box.params.grad = None
        box(x).backward(torch.ones(32, M, dtype=torch.float64))
    inputs, params = estimator.part_fidelity("inputs"), estimator.part_fidelity("params")
    # every row moved one part only, so each part was measured on its own rows
    assert inputs.rows + params.rows == 3 * 32 and min(inputs.rows, params.rows) >= 16
    assert inputs.cosine > 0.999 and params.cosine < -0.999
    assert torch.allclose(x.grad, torch.ones(32, M, dtype=torch.float64) @ A, atol=1e-6)
    assert estimator.withholds("params") and box.params.grad is None


def test_the_twin_prior_starts_the_correction_at_zero_and_is_fed_the_same_data():
    estimator = LearnedJacobian(hidden=(16,), updates=0, step=1e-3, seed=1)
    assert isinstance(estimator.prior, DigitalTwin)
    box = bg.BlackBox(torch.tanh, estimator, calibrate=False)
    x = batch(6).requires_grad_(True)
    g = batch(7)
    box(x).backward(g)
    # the correction starts at J = 0: the estimate is the twin's VJP alone
    twin_vjp = estimator.prior.predict_vjp(x.detach(), g)
    inputs = torch.zeros(x.shape[1], dtype=torch.bool)  # no θ: every coordinate is an input
    assert torch.allclose(estimator.upstream_vjp(x.detach(), g, inputs), twin_vjp)
    # 32 rows scored, fewer than the gate needs: the box withheld that estimate
    assert estimator.withholds("inputs") and x.grad is None
    assert len(estimator.prior.values) == 32 and len(estimator.prior.buffer) == len(estimator.buffer) == 32
    # a structure given by the user, or prior=None, means no twin
    assert LearnedJacobian(model=ConstantJacobian(M, N)).prior is None
    assert LearnedJacobian(prior=None).prior is None and LearnedVJP(prior=None).prior is None
    with pytest.raises(ValueError, match="prior must be 'twin'"):
        LearnedVJP(prior="mlp")
    with pytest.raises(TypeError, match="prior must be a DigitalTwin"):
        LearnedJacobian(prior=object())


def test_bench_tables_carry_the_fidelity_of_learned_estimators():
    from blackgrad.bench.report import summarise

    def record(method, seed, fidelity):
        return dict(task="t", method=method, seed=seed, accuracy=0.5, evaluations_per_sample=2.0, cosine=None, wall_seconds=1.0, fidelity=fidelity)

    rows = {row["method"]: row for row in summarise([record("default-twin", 0, 0.8), record("default-twin", 1, 0.6), record("default-spsa", 0, None)])["t"]}
    assert rows["default-twin"]["fidelity"] == pytest.approx(0.7)
    assert rows["default-spsa"]["fidelity"] is None


def test_broyden_scores_its_one_jacobian_and_withholds_it_where_the_device_is_not_linear():
    from blackgrad.estimators import Broyden

    def wiggly(x):
        return torch.sin(6 * x[:, :M]) * torch.cos(5 * x[:, 1:M + 1])

    for device, opens in ((linear, True), (wiggly, False)):
        estimator = Broyden(step=1e-4, gate_rows=64)
        box = bg.BlackBox(device, estimator, calibrate=False)
        for seed in range(4):
            x = batch(seed).requires_grad_(True)
            box(x).backward(batch(seed + 10)[:, :M])
        assert estimator.fidelity.rows == 4 * 32
        assert (estimator.fidelity.cosine > 0.9) == opens
        assert (x.grad is None) == (not opens)  # withheld where shut
        assert not opens or x.grad.abs().max().item() > 0


def test_the_gate_opens_at_high_and_closes_only_below_low():
    from blackgrad.estimators.fidelity import FidelityMonitor

    monitor = FidelityMonitor(gate=(0.4, 0.6), gate_rows=10)
    generator = torch.Generator().manual_seed(0)
    direction = torch.ones(50, 3)

    def feed(cosine, times=40):
        """Rows whose predictions have the given cosine with the measurements."""
        for _ in range(times):
            measured = torch.randn(50, generator=generator)
            noise = torch.randn(50, generator=generator)
            noise = noise - (noise @ measured) / (measured @ measured) * measured
            predicted = cosine * measured / measured.norm() + (1 - cosine**2) ** 0.5 * noise / noise.norm()
            monitor.score(predicted, measured, direction, None)
        return monitor.factor("inputs")

    assert feed(0.5) == 0.0  # between low and high: a closed gate stays closed
    assert feed(0.8) == 1.0
    assert feed(0.5) == 1.0  # ... and an open one stays open
    assert feed(0.2) == 0.0
    assert monitor.part("inputs").cosine == pytest.approx(0.2, abs=0.02)


def test_known_measurement_noise_is_taken_out_of_the_fidelity_but_never_more_than_half():
    from blackgrad.estimators.fidelity import FidelityMonitor

    generator = torch.Generator().manual_seed(1)
    truth = torch.randn(20_000, generator=generator, dtype=torch.float64)
    measured = truth + torch.randn(20_000, generator=generator, dtype=torch.float64)  # noise variance 1
    direction = torch.ones(20_000, 2)
    raw, corrected, overstated = FidelityMonitor(), FidelityMonitor(), FidelityMonitor()
    raw.score(truth, measured, direction, None)
    corrected.score(truth, measured, direction, None, noise=torch.ones(20_000))
    overstated.score(0.1 * truth + torch.randn(20_000, generator=generator, dtype=torch.float64), measured, direction, None, noise=torch.full((20_000,), 5.0))
    # a perfect model seen through noise as loud as the signal: cosine 1/√2 measured, 1 corrected
    assert raw.part("inputs").cosine == pytest.approx(2**-0.5, abs=0.02)
    assert corrected.part("inputs").cosine == pytest.approx(1.0, abs=0.03)
    # an overstated noise can raise a poor model's cosine by √2 at most
    assert overstated.part("inputs").cosine < 2**0.5 * 0.1 and overstated.part("inputs").cosine < 0.6


def test_the_default_jacobian_head_is_low_rank_once_m_times_d_is_large():
    from blackgrad.estimators.learned_jacobian import DEFAULT_RANK, FULL_HEAD_LIMIT, _FullJacobian, _LowRankJacobian

    small, large = LearnedJacobian(hidden=(8,)), LearnedJacobian(hidden=(8,))
    small.prepare(16, 16, torch.zeros(1))
    large.prepare(200, 200, torch.zeros(1))  # wider still (m + d > NET_FACTORS_LIMIT): tests/test_scaling.py
    assert 16 * 16 <= FULL_HEAD_LIMIT < 200 * 200
    assert isinstance(small.model, _FullJacobian) and isinstance(large.model, _LowRankJacobian)
    outputs = large.model.net[-1][-1].out_features
    assert outputs == (200 + 200) * DEFAULT_RANK  # grows like (m + d)·r, not m·d


def test_only_a_twin_can_be_a_prior():
    for bad in (LearnedJacobian(prior=None), LearnedVJP(prior=None)):
        with pytest.raises(TypeError, match="prior must be a DigitalTwin"):
            LearnedJacobian(prior=bad)


def test_fractional_probes_that_round_to_none_leave_the_estimator_ungated_not_silent():
    estimator = LearnedJacobian(hidden=(8,), probes=0.25, step=1e-3)
    box = bg.BlackBox(torch.tanh, estimator, calibrate=False)
    x = batch(0, rows=2).requires_grad_(True)
    box(x).sum().backward()  # round(0.25 · 2) = 0 probes: nothing scored
    assert box.calls.probe == 0 and estimator.fidelity is None and x.grad.abs().max().item() > 0


def test_a_learned_estimator_cast_to_another_dtype_says_so():
    box = bg.BlackBox(torch.tanh, LearnedJacobian(hidden=(8,), step=1e-3), calibrate=False)
    model = nn.Sequential(nn.Linear(3, N), box)
    model(torch.randn(8, 3)).sum().backward()
    model.double()
    with pytest.raises(TypeError, match="built for torch.float32 inputs and now gets torch.float64"):
        model(torch.randn(8, 3, dtype=torch.float64)).sum().backward()


# ------------------------------------------------- random-direction estimators
def _spread_run(estimator, d, m, rows, agree, passes=150, seed=0):
    """Train nothing: ``passes`` backward passes through ``x ↦ x Aᵀ``; returns the true cosines.

    The cosine compared is that of the batch-summed input gradient with the
    exact one, the quantity the spread score estimates.
    """
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(m, d, dtype=torch.float64, generator=generator)
    box = bg.BlackBox(lambda x: x @ matrix.T, estimator, calibrate=False)
    cosines = []
    for _ in range(passes):
        x = torch.randn(rows, d, dtype=torch.float64, generator=generator, requires_grad=True)
        g = torch.randn(rows, m, dtype=torch.float64, generator=generator)
        if agree:  # samples whose gradients mostly agree, as in a trained model's batch
            g = torch.randn(1, m, dtype=torch.float64, generator=generator) + 0.3 * g
        box(x).backward(g)
        passed = torch.zeros_like(x) if x.grad is None else x.grad  # withheld: nothing passed, cosine 0
        cosines.append(nn.functional.cosine_similarity(passed.sum(0), (g @ matrix).sum(0), dim=0).item())
    return box, torch.tensor(cosines)


@pytest.mark.parametrize("d, m, rows, k", [(16, 8, 64, 1), (64, 64, 64, 1), (32, 16, 16, 4), (4, 4, 64, 2)])
def test_spsa_scores_its_batch_summed_gradient_by_its_own_spread(d, m, rows, k):
    box, cosines = _spread_run(bg.estimators.SPSA(directions=k, step=1e-2, gate=None, seed=1), d, m, rows, agree=True)
    # the decayed running score against the true cosine of the last ~10 passes' sums
    assert box.fidelity.cosine == pytest.approx(cosines[-30:].mean().item(), abs=0.08)
    assert box.fidelity.rows == 150 * rows


def test_spsa_withholds_a_gradient_that_is_mostly_noise_and_passes_a_clear_one():
    noisy, _ = _spread_run(bg.estimators.SPSA(step=1e-2, seed=1), 64, 8, 16, agree=False, passes=40)
    assert noisy.fidelity.cosine < 0.4 and noisy.estimator.monitor.factor("inputs") == 0.0
    x = torch.randn(16, 64, dtype=torch.float64, requires_grad=True)
    noisy(x).sum().backward()
    assert x.grad is None  # shut: the gradient is withheld, nothing moves upstream
    clear, cosines = _spread_run(bg.estimators.SPSA(step=1e-2, seed=1), 4, 4, 64, agree=True, passes=40)
    assert clear.fidelity.cosine > 0.6 and clear.estimator.monitor.factor("inputs") == 1.0
    assert cosines[-1] > 0.6 and torch.count_nonzero(clear.estimator.monitor.sums) > 0


def test_unbiased_passes_a_good_models_correction_and_withholds_a_noisy_one():
    def twin(weight):
        model = nn.Linear(N, M, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(weight)
        return DigitalTwin(model=model, updates=0, step=1e-3)

    good = bg.estimators.Unbiased(twin(A + 0.01 * A.flip(0)), seed=1)
    bad = bg.estimators.Unbiased(twin(torch.zeros(M, N)), seed=1)
    for estimator in (good, bad):
        box = bg.BlackBox(linear, estimator, calibrate=False)
        for seed in range(40):  # 320 rows: past gate_rows
            x = batch(seed, rows=8).requires_grad_(True)
            box(x).backward(torch.randn(8, M, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    assert good.fidelity.cosine > 0.9 and good.monitor.factor("inputs") == 1.0
    # a zero model leaves plain SPSA: one direction in 6 dimensions and 8 disagreeing samples
    assert bad.fidelity.cosine < 0.6 and bad.monitor.factor("inputs") == 0.0


def test_the_spread_score_and_gate_survive_state_dict():
    box, _ = _spread_run(bg.estimators.SPSA(step=1e-2, seed=1), 4, 4, 64, agree=True, passes=10)
    fresh = bg.estimators.SPSA(step=1e-2, seed=5)
    fresh.load_state_dict(copy.deepcopy(box.estimator.state_dict()))
    assert fresh.fidelity == box.fidelity and fresh.monitor.open == box.estimator.monitor.open


def test_a_shut_unbiased_part_passes_its_inner_estimators_gradient():
    model = nn.Linear(N, M, bias=False).double()
    weight = A + 0.05 * A.flip(0)
    with torch.no_grad():
        model.weight.copy_(weight)
    inner = DigitalTwin(model=model, updates=0, step=1e-3)
    estimator = bg.estimators.Unbiased(inner, seed=1, gate_rows=10**9)  # its own gate never opens
    box = bg.BlackBox(linear, estimator, calibrate=False)
    for seed in range(40):
        x = batch(seed, rows=8).requires_grad_(True)
        g = torch.randn(8, M, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        box(x).backward(g)
    assert estimator.monitor.factor("inputs") == 0.0 and inner.gate_factor("inputs") == 1.0
    assert torch.allclose(x.grad, g @ weight)  # the twin's own VJP, not zero and not the correction


def test_unbiased_withholds_a_part_where_it_falls_back_on_an_inner_estimator_that_withholds_it():
    inner = DigitalTwin(model=nn.Linear(N, M, bias=False).double(), updates=0, step=1e-3, gate_rows=10**9)
    estimator = bg.estimators.Unbiased(inner, seed=1, gate_rows=10**9)  # neither gate ever opens
    box = bg.BlackBox(linear, estimator, calibrate=False)
    x = batch(0, rows=8).requires_grad_(True)
    box(x).backward(torch.ones(8, M, dtype=torch.float64))
    assert estimator.monitor.factor("inputs") == 0.0 and inner.gate_factor("inputs") == 0.0
    assert estimator.withholds("inputs") and x.grad is None


def test_unbiased_scores_its_inner_gradient_on_the_spread_scale_and_passes_the_better():
    d, m, rows = 16, 8, 64
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(m, d, dtype=torch.float64, generator=generator)
    twin = nn.Linear(d, m, bias=False).double()
    with torch.no_grad():  # a twin whose VJP is off by a known amount
        twin.weight.copy_(matrix + 0.5 * torch.randn(m, d, dtype=torch.float64, generator=generator))
    inner = DigitalTwin(model=twin, updates=0, step=1e-3)
    estimator = bg.estimators.Unbiased(inner, seed=1, step=1e-3)
    box = bg.BlackBox(lambda x: x @ matrix.T, estimator, calibrate=False)
    true_cosines, passed_inner = [], []
    for _ in range(150):
        x = torch.randn(rows, d, dtype=torch.float64, generator=generator, requires_grad=True)
        g = torch.randn(1, m, dtype=torch.float64, generator=generator) + 0.3 * torch.randn(rows, m, dtype=torch.float64, generator=generator)
        box(x).backward(g)
        inner_sum, exact_sum = (g @ twin.weight.detach()).sum(0), (g @ matrix).sum(0)
        true_cosines.append(nn.functional.cosine_similarity(inner_sum, exact_sum, dim=0).item())
        passed_inner.append(x.grad is not None and torch.allclose(x.grad, g @ twin.weight.detach()))
    assert estimator.monitor.baseline_cosine("inputs") == pytest.approx(sum(true_cosines[-30:]) / 30, abs=0.08)
    # the part passes whichever scores higher: here the twin, once the gate has opened
    own, other = estimator.fidelity.cosine, estimator.monitor.baseline_cosine("inputs")
    assert passed_inner[-1] == (other > own or estimator.monitor.factor("inputs") == 0.0)
    assert bg.estimators.Unbiased(inner, gate=None).monitor.baseline_cosine("inputs") is None
