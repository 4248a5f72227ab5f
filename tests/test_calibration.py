"""Calibration: the profile recovers injected noise and ADC steps, at exactly its stated cost."""

import math

import pytest
import torch

import blackgrad as bg
from blackgrad.calibration import STEP_GRID, calibration_cost
from blackgrad.devices import SHG, Linear, Noisy, Quantized
from blackgrad.estimators import SPSA, DigitalTwin, FiniteDifference, LearnedJacobian

X = torch.rand(32, 16, generator=torch.Generator().manual_seed(3)) * 0.6 - 0.3


class Counting:
    """A device wrapper that counts the samples it was asked to evaluate."""

    def __init__(self, device):
        self.device, self.samples = device, 0

    def __call__(self, x, theta=None):
        self.samples += x.shape[0]
        return self.device(x, theta) if theta is not None else self.device(x)


def test_noise_level_is_recovered_and_the_outputs_are_not_taken_for_levels():
    profile = bg.calibrate(Noisy(Linear(16, 8), std=0.02, seed=1), X)
    # 8 points × 8 repeats × 8 outputs: 448 degrees of freedom, a standard error of about 3 %
    assert profile.noise == pytest.approx(0.02, rel=0.15)
    assert profile.quantum == 0.0
    assert not profile.clean and profile.step is not None


@pytest.mark.parametrize("bits", [5, 8])
def test_adc_step_is_recovered_with_and_without_noise(bits):
    spacing = 1.0 / (2**bits - 1)
    noisy = bg.calibrate(Quantized(Noisy(SHG(), std=0.01, seed=2), bits=bits, low=0.0, high=1.0), X)
    assert noisy.quantum == pytest.approx(spacing, rel=1e-3)
    # the spread of repeated readings: the noise, widened (or, at 5 bits, hidden) by the rounding
    assert 0.0 < noisy.noise < 0.01 + spacing
    quiet = bg.calibrate(Quantized(SHG(), bits=bits, low=0.0, high=1.0), X)
    assert quiet.noise == 0.0 and quiet.quantum == pytest.approx(spacing, rel=1e-3)
    assert quiet.step is not None  # a step below one level would measure nothing


def test_a_clean_float_function_keeps_the_dtype_steps():
    profile = bg.calibrate(SHG(), X)
    assert profile.clean and profile.step is None and profile.noise == 0.0 and profile.quantum == 0.0
    assert "clean" in repr(profile)
    estimator = SPSA()
    estimator.calibrate(profile)
    assert estimator.probe_step(torch.float32, 2) == pytest.approx(torch.finfo(torch.float32).eps ** (1 / 3))


def test_noisier_devices_get_larger_steps_about_as_the_square_root_of_the_noise():
    steps = [bg.calibrate(Noisy(SHG(), std=std, seed=4), X).step for std in (0.0025, 0.02)]
    # the optimum balances noise/h against curvature·h: 8× the noise, about √8 ≈ 2.8× the step
    assert 2.0 <= steps[1] / steps[0] <= 4.0


def test_calibration_spends_exactly_its_stated_evaluations_and_counts_them_as_their_own_kind():
    device = Counting(Noisy(SHG(), std=0.01, seed=0))
    box = bg.BlackBox(device, SPSA(directions=2), params=SHG().default_params())
    x = X.clone().requires_grad_(True)
    box(x).sum().backward()
    stated = calibration_cost(8, 8, 2)
    assert stated == 8 * (8 + 2 * len(STEP_GRID)) == box.profile.evaluations
    assert box.calls.calibration == stated
    assert (box.calls.forward, box.calls.probe) == (32, 2 * 2 * 32)
    assert device.samples == box.calls.total == 32 + 128 + stated
    # the estimator now probes with the calibrated step
    assert box.estimator.probe_step(torch.float32, 2) == box.profile.step


def test_blackbox_calibrates_once_and_only_when_a_probing_gradient_is_needed():
    device = Noisy(SHG(), std=0.01, seed=0)
    box = bg.BlackBox(device, SPSA())
    with torch.no_grad():
        box(X)
    box.eval()
    box(X.clone().requires_grad_(True)).sum().backward()
    assert box.profile is None and box.calls.calibration == 0  # evaluation mode: no calibration
    box.train()
    for _ in range(2):
        box(X.clone().requires_grad_(True)).sum().backward()
    assert box.calls.calibration == calibration_cost(8, 8, 2)
    # told a step, an estimator needs no profile; told not to, a box never calibrates
    told = bg.BlackBox(device, SPSA(step=0.05))
    told(X.clone().requires_grad_(True)).sum().backward()
    assert told.profile is None and told.calls.calibration == 0
    off = bg.BlackBox(device, SPSA(), calibrate=False)
    off(X.clone().requires_grad_(True)).sum().backward()
    assert off.profile is None and off.calls.calibration == 0


def test_a_given_profile_is_used_without_evaluations_and_round_trips_through_state_dict():
    profile = bg.calibrate(Noisy(SHG(), std=0.01, seed=0), X)
    assert bg.DeviceProfile.from_state_dict(profile.state_dict()) == profile
    box = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), FiniteDifference(scheme="forward"), calibrate=profile)
    box(X[:4].clone().requires_grad_(True)).sum().backward()
    assert box.calls.calibration == 0
    assert box.estimator.probe_step(torch.float32) == profile.step
    clone = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), FiniteDifference(scheme="forward"))
    clone.load_state_dict(box.state_dict())
    assert clone.profile == profile and clone.estimator.probe_step(torch.float32) == profile.step


def test_learned_estimators_take_their_step_from_the_profile():
    device = Noisy(SHG(), std=0.01, seed=0)
    box = bg.BlackBox(device, LearnedJacobian(hidden=(8,), rank=2), params=SHG().default_params())
    box(X.clone().requires_grad_(True)).sum().backward()
    assert box.profile is not None
    assert box.estimator.buffer.data["step"][0].item() == pytest.approx(box.profile.step)
    # a twin that does not probe needs no calibration
    assert not DigitalTwin(probes=0).needs_profile


def test_bad_calibration_options_are_refused_with_their_names():
    with pytest.raises(ValueError, match="points"):
        bg.calibrate(SHG(), X, points=0)
    with pytest.raises(ValueError, match="repeats"):
        bg.calibrate(SHG(), X, repeats=1)
    with pytest.raises(ValueError, match="snr"):
        bg.calibrate(SHG(), X, snr=math.nan)
    with pytest.raises(ValueError, match="non-empty batch"):
        bg.calibrate(SHG(), X[:0])
    with pytest.raises(TypeError, match="calibrate must be True, False or a DeviceProfile"):
        bg.BlackBox(SHG(), calibrate="yes")
    with pytest.raises(ValueError, match="missing"):
        bg.DeviceProfile.from_state_dict({"noise": 0.1})


def test_nan_and_infinite_steps_are_refused_at_construction():
    for bad in (math.nan, math.inf, -0.1, True):
        with pytest.raises(ValueError, match="step must be a positive number"):
            FiniteDifference(step=bad)
        with pytest.raises(ValueError, match="step must be a positive number"):
            LearnedJacobian(step=bad)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: DigitalTwin(hidden="128"), "hidden"),
        (lambda: DigitalTwin(hidden=128), "hidden"),
        (lambda: LearnedJacobian(hidden=(True, 64)), "hidden size"),
        (lambda: bg.estimators.LearnedVJP(hidden=(0,)), "hidden size"),
        (lambda: bg.estimators.LearnedVJP(rank=True), "rank"),
        (lambda: DigitalTwin(slope_weight=math.nan), "slope_weight"),
        (lambda: DigitalTwin(slope_weight=True), "slope_weight"),
        (lambda: DigitalTwin(slope_snr=True), "slope_snr"),
        (lambda: DigitalTwin(slope_snr=0), "slope_snr"),
        (lambda: DigitalTwin(slope_snr=math.nan), "slope_snr"),
        (lambda: DigitalTwin(slope_snr="3"), "slope_snr"),
        (lambda: DigitalTwin(probes=True), "probes"),
        (lambda: bg.estimators.LeastSquares(neighbors=True), "neighbors"),
        (lambda: SPSA(directions=2.0), "directions"),
        (lambda: LearnedJacobian(embedding="fourier"), "embedding"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_at_construction_by_name(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_blackbox_without_an_estimator_uses_the_recommended_estimator_and_calibrates_it():
    box = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), params=SHG().default_params())
    assert isinstance(box.estimator, LearnedJacobian) and box.estimator.probes == 1.0
    assert isinstance(box.estimator.prior, DigitalTwin) and box.estimator.prior.slope_weight == 1.0
    assert box.estimator.prior.slope_snr == 3.0
    box(X.clone().requires_grad_(True)).sum().backward()
    assert box.calls.calibration == calibration_cost(8, 8, 2) and box.calls.probe == 32
    assert box.estimator.buffer.data["step"][0].item() == pytest.approx(box.profile.step)


def test_a_calibration_that_does_not_fit_the_budget_spends_nothing():
    box = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), SPSA(), budget=100, name="lab")
    with pytest.raises(bg.BudgetExhausted, match=r"'lab' is spent: 0 used .* this calibration needs 272 more"):
        box(X.clone().requires_grad_(True))
    assert box.calls.total == 0 and box.profile is None
    box.budget = 10_000  # raise it and redo the step
    box(X.clone().requires_grad_(True)).sum().backward()
    assert box.calls.calibration == 272 and box.profile is not None


def test_complex_inputs_are_not_calibrated_and_still_train():
    box = bg.BlackBox(lambda x: x * x.abs(), FiniteDifference())
    x = torch.randn(8, 3, dtype=torch.complex64, requires_grad=True)
    box(x).abs().sum().backward()
    assert box.profile is None and box.calls.calibration == 0 and x.grad is not None


def test_a_given_profile_survives_loading_a_checkpoint_that_has_none():
    profile = bg.calibrate(Noisy(SHG(), std=0.01, seed=0), X)
    plain = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), FiniteDifference(), calibrate=False)
    plain(X[:2])
    box = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), FiniteDifference(), calibrate=profile)
    box.load_state_dict(plain.state_dict())
    assert box.profile == profile and box.estimator.probe_step(torch.float32, 2) == profile.step


def test_finite_differences_take_a_calibrated_step_as_the_displacement_it_was_measured_as():
    profile = bg.calibrate(Noisy(SHG(), std=0.01, seed=0), X)
    seen = []

    def device(x):
        seen.append(x.detach().clone())
        return SHG()(x)

    box = bg.BlackBox(device, FiniteDifference(scheme="forward"), calibrate=profile)
    x = (X[:2] * 10).requires_grad_(True)  # inputs far above 1: a relative step would be ten times wider
    box(x).sum().backward()
    moved = (seen[1].reshape(16, 2, 16) - x.detach()).abs().amax(2)
    assert torch.allclose(moved, torch.full_like(moved, profile.step), rtol=1e-3)
    # a step the user gives stays relative, as documented
    seen.clear()
    told = bg.BlackBox(device, FiniteDifference(scheme="forward", step=0.01), calibrate=False)
    told(x).sum().backward()
    moved = (seen[1].reshape(16, 2, 16) - x.detach()).abs().amax(2)
    assert torch.allclose(moved, 0.01 * x.detach().abs().clamp(min=1).T.reshape(16, 2), rtol=1e-3)


def test_a_budget_too_small_for_calibration_says_how_to_go_on_without_it():
    box = bg.BlackBox(Noisy(SHG(), std=0.01, seed=0), SPSA(), budget=200)
    with pytest.raises(bg.BudgetExhausted, match="calibrate=False or a DeviceProfile"):
        box(X.clone().requires_grad_(True))


def test_a_twin_with_slope_snr_discounts_slope_rows_that_are_mostly_noise():
    # noise floor 0.01, one-sided step 0.02: each slope output carries noise of variance
    # 2 * 0.01**2 / 0.02**2 = 0.5; slopes of mean square 0.75 are two thirds noise (SNR 0.5)
    profile = bg.DeviceProfile(noise=0.01, quantum=0.0, scale=1.0, input_scale=1.0, step=0.02, length_scale=None, evaluations=0)
    slope = torch.full((4, 3), 0.75**0.5)
    rows = {"slope": slope, "step": torch.full((4,), 0.02), "central": torch.zeros(4, dtype=torch.bool)}
    twin = DigitalTwin(slope_weight=2.0, slope_snr=3.0)
    assert twin.slope_term_weight(rows) == 2.0  # not calibrated: no noise to discount
    twin.calibrate(profile)
    assert twin.slope_term_weight(rows) == pytest.approx(2.0 * 0.5 / 3.0)
    # a central slope's noise is a quarter of a one-sided one's: SNR (0.75 - 0.125) / 0.125 = 5 >= 3
    assert twin.slope_term_weight({**rows, "central": torch.ones(4, dtype=torch.bool)}) == pytest.approx(2.0)
    # ten times the slope: mostly signal, full weight
    assert twin.slope_term_weight({**rows, "slope": 10 * slope}) == pytest.approx(2.0)
    plain = DigitalTwin(slope_weight=2.0)
    plain.calibrate(profile)
    assert plain.slope_term_weight(rows) == 2.0  # slope_snr=None: every row counts in full
