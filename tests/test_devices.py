"""Tests of blackgrad.devices: the device contract, the physics, the imperfections."""

from __future__ import annotations

import math
import time

import pytest
import torch

from blackgrad.devices import (
    SHG,
    Device,
    Drifting,
    Faulty,
    KerrFiber,
    Linear,
    Noisy,
    Oscillators,
    Quantized,
    Saturating,
)
from blackgrad.errors import InputShapeError

# name -> (factory, input range); small sizes where the physics allows, to stay fast.
PLAIN = {
    "linear": (lambda: Linear(5, 3, seed=1), (-1.0, 1.0)),
    "shg": (lambda: SHG(), (-1.0, 1.0)),
    "shg_no_params": (lambda: SHG(in_features=8, out_features=4, n_params=0, n_bins=64), (-1.0, 1.0)),
    "kerr_amplitude": (lambda: KerrFiber(), (0.0, 1.0)),
    "kerr_phase": (lambda: KerrFiber(in_features=8, out_features=6, n_params=4, encoding="phase"), (-1.0, 1.0)),
    "oscillators": (lambda: Oscillators(), (-1.0, 1.0)),
    "oscillators_small": (lambda: Oscillators(in_features=3, out_features=5, n_oscillators=6, seed=3), (-1.0, 1.0)),
}
WRAPPED = {
    "noisy": (lambda: Noisy(SHG(), std=0.05, seed=1), (-1.0, 1.0)),
    "quantized": (lambda: Quantized(KerrFiber(), bits=6), (0.0, 1.0)),
    "saturating": (lambda: Saturating(Linear(5, 3), level=0.5), (-1.0, 1.0)),
    "drifting": (lambda: Drifting(Oscillators(), rate=0.01, seed=2), (-1.0, 1.0)),
    "faulty": (lambda: Faulty(Linear(5, 3), nan_rate=0.0, seed=4), (-1.0, 1.0)),
    "stacked": (lambda: Faulty(Noisy(Quantized(SHG(), bits=8), std=0.01)), (-1.0, 1.0)),
}
ALL = {**PLAIN, **WRAPPED}
# Devices with nontrivial physics whose exact VJP is checked against finite differences.
PHYSICS = ["shg", "shg_no_params", "kerr_amplitude", "kerr_phase", "oscillators_small"]
# Smaller instances for the full-Jacobian gradcheck, which costs one backward pass per output.
GRADCHECK = {
    "shg": (lambda: SHG(in_features=6, out_features=5, n_params=4, n_bins=40), (-1.0, 1.0)),
    "kerr_amplitude": (lambda: KerrFiber(in_features=4, out_features=4, n_params=3, n_grid=64, steps=6), (0.0, 1.0)),
    "kerr_phase": (lambda: KerrFiber(in_features=4, out_features=4, n_params=0, n_grid=64, steps=6, encoding="phase"), (-1.0, 1.0)),
    "oscillators": (lambda: Oscillators(in_features=3, out_features=4, n_oscillators=5, steps=40), (-1.0, 1.0)),
}


def inputs(device: Device, bounds: tuple[float, float], batch: int = 4, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    low, high = bounds
    generator = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(batch, device.in_features, generator=generator, dtype=torch.float64)).to(dtype)


def random_theta(device: Device, seed: int = 1, scale: float = 0.3) -> torch.Tensor | None:
    if device.n_params == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(device.n_params, generator=generator, dtype=torch.float64)


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_dtype_and_default_theta(name, dtype):
    factory, bounds = ALL[name]
    device = factory()
    x = inputs(device, bounds, batch=7, dtype=dtype)
    y = device(x)
    assert isinstance(device, Device)
    assert y.shape == (7, device.out_features)
    assert y.dtype == dtype and y.device == x.device
    theta0 = device.default_params(dtype=dtype)
    assert theta0.shape == (device.n_params,) and theta0.dtype == dtype
    assert torch.equal(theta0, device.default_params(dtype=dtype))
    assert isinstance(device.name, str) and device.name
    # θ = None means the default parameters (compare clean references: calls may be noisy)
    assert torch.equal(device.reference(x), device.reference(x, theta0))


@pytest.mark.parametrize("name", list(PLAIN))
def test_theta_changes_output_and_call_equals_reference(name):
    factory, bounds = PLAIN[name]
    device = factory()
    x = inputs(device, bounds, dtype=torch.float64)
    assert torch.equal(device(x), device.reference(x))
    if device.n_params:
        assert not torch.allclose(device(x), device(x, random_theta(device)))


def test_bad_shapes_are_rejected():
    device = SHG()
    with pytest.raises(InputShapeError):
        device(torch.zeros(3, 15))
    with pytest.raises(InputShapeError):
        device(torch.zeros(16))
    with pytest.raises(InputShapeError):
        device(torch.zeros(3, 16), torch.zeros(15))
    with pytest.raises(TypeError):
        device(torch.zeros(3, 16, dtype=torch.int64))


def test_half_precision_input_keeps_its_dtype():
    device = SHG()
    x = inputs(device, (-1.0, 1.0), dtype=torch.bfloat16)
    y = device(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), device(x.float()), atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------- determinism
def test_linear_default_params_are_seeded():
    assert torch.equal(Linear(4, 3, seed=5).default_params(), Linear(4, 3, seed=5).default_params())
    assert not torch.equal(Linear(4, 3, seed=5).default_params(), Linear(4, 3, seed=6).default_params())
    # scaled as a Gaussian / sqrt(n): the row norms are about 1
    theta = Linear(400, 50, seed=0).matrix()
    assert 0.9 < float(theta.norm(dim=1).mean()) < 1.1


def test_oscillator_network_is_seeded():
    x = inputs(Oscillators(), (-1.0, 1.0))
    assert torch.equal(Oscillators(seed=7)(x), Oscillators(seed=7)(x))
    assert not torch.allclose(Oscillators(seed=7)(x), Oscillators(seed=8)(x))


@pytest.mark.parametrize(
    "factory",
    [
        lambda seed: Noisy(Linear(5, 3), std=0.1, seed=seed),
        lambda seed: Noisy(Linear(5, 3), std=0.1, relative=True, seed=seed),
        lambda seed: Drifting(Linear(5, 3), rate=0.1, seed=seed),
        lambda seed: Faulty(Linear(5, 3), nan_rate=0.5, seed=seed),
    ],
)
def test_random_wrappers_repeat_under_a_seed(factory):
    x = inputs(Linear(5, 3), (-1.0, 1.0), batch=16)

    def run(seed):
        device = factory(seed)
        return torch.stack([device(x) for _ in range(8)])

    torch.testing.assert_close(run(3), run(3), equal_nan=True, rtol=0, atol=0)
    assert not torch.allclose(run(3), run(4), equal_nan=True)


# --------------------------------------------------------------- exact VJPs
def test_linear_exact_vjp_is_the_transpose():
    device = Linear(6, 4, seed=2)
    x = inputs(device, (-1.0, 1.0), batch=5, dtype=torch.float64)
    theta = random_theta(device, scale=1.0)
    grad_out = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grad_x, grad_theta = device.exact_vjp(x, theta, grad_out)
    matrix = theta.reshape(4, 6)
    torch.testing.assert_close(grad_x, grad_out @ matrix)  # θᵀ g per sample
    torch.testing.assert_close(grad_theta, (grad_out.T @ x).flatten())  # Σ_b g_b x_bᵀ
    torch.testing.assert_close(device(x, theta), x @ matrix.T)


@pytest.mark.parametrize("name", PHYSICS)
def test_exact_vjp_matches_central_finite_difference(name):
    factory, bounds = PLAIN[name]
    device = factory()
    generator = torch.Generator().manual_seed(11)
    x = inputs(device, bounds, batch=3, dtype=torch.float64)
    theta = random_theta(device)
    grad_out = torch.randn(3, device.out_features, dtype=torch.float64, generator=generator)
    grad_x, grad_theta = device.exact_vjp(x, theta, grad_out)
    assert grad_x.shape == x.shape
    assert (grad_theta is None) == (device.n_params == 0)
    for _ in range(3):  # random directions (v in x, w in θ)
        v = torch.randn(x.shape, dtype=torch.float64, generator=generator)
        w = None if theta is None else torch.randn(theta.shape, dtype=torch.float64, generator=generator)
        step = 1e-5

        def loss(sign):
            shifted_theta = None if theta is None else theta + sign * step * w
            return float((grad_out * device(x + sign * step * v, shifted_theta)).sum())

        finite_difference = (loss(+1) - loss(-1)) / (2 * step)
        exact = float((grad_x * v).sum()) + (0.0 if w is None else float((grad_theta * w).sum()))
        assert exact == pytest.approx(finite_difference, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_reference_passes_gradcheck_in_float64(name):
    factory, bounds = GRADCHECK[name]
    device = factory()
    x = inputs(device, bounds, batch=2, dtype=torch.float64).requires_grad_(True)
    theta = random_theta(device)
    if theta is None:
        assert torch.autograd.gradcheck(device.reference, (x,))
    else:
        assert torch.autograd.gradcheck(device.reference, (x, theta.requires_grad_(True)))


# ----------------------------------------------------------------------- SHG
def test_shg_flat_phase_gives_ones_and_bounds_every_other_phase():
    device = SHG()
    flat = device(torch.zeros(1, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64))
    torch.testing.assert_close(flat, torch.ones(1, 16, dtype=torch.float64))
    x = inputs(device, (-1.0, 1.0), batch=256, dtype=torch.float64)
    y = device(x, random_theta(device, scale=1.0))
    # SH power is non-negative, and a flat phase adds every pair of frequencies
    # in phase, so no phase can beat it in any bin (triangle inequality).
    assert float(y.min()) >= 0.0
    assert float(y.max()) <= 1.0 + 1e-12
    assert float((y - 1).abs().min()) > 1e-3  # random phases really differ from flat
    assert float(y.std(0).min()) > 0.01  # and differ between samples


def test_shg_response_is_strongly_oscillatory():
    """Sweeping one input over [-1, 1] (6π of phase) swings the output back and forth."""
    device = SHG()
    points, output = 301, 7
    base = inputs(device, (-1.0, 1.0), batch=1, dtype=torch.float64)
    sweep = torch.linspace(-1, 1, points, dtype=torch.float64)
    # one batch holding a sweep of every input in turn, the others fixed at `base`
    x = base.repeat(device.in_features, points, 1)
    for index in range(device.in_features):
        x[index, :, index] = sweep
    x = x.reshape(-1, device.in_features)
    response = device(x)[:, output].reshape(device.in_features, points)
    grad_out = torch.zeros(x.shape[0], device.out_features, dtype=torch.float64)
    grad_out[:, output] = 1.0
    grad_x = device.exact_vjp(x, None, grad_out)[0].reshape(device.in_features, points, device.in_features)
    slope = grad_x.diagonal(dim1=0, dim2=2).T  # d response / d swept input, (inputs, points)
    centred = response - response.mean(1, keepdim=True)
    mean_crossings = (centred[:, 1:] * centred[:, :-1] < 0).sum(1)
    slope_sign_changes = (slope[:, 1:] * slope[:, :-1] < 0).sum(1)
    # three full periods of phase: at least two mean crossings and two extrema per period
    assert int(mean_crossings.min()) >= 5, mean_crossings.tolist()
    assert int(slope_sign_changes.min()) >= 5, slope_sign_changes.tolist()


# ---------------------------------------------------------------- KerrFiber
def test_kerr_fiber_conserves_energy_and_is_linear_without_kerr_effect():
    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(16, 16, generator=generator, dtype=torch.float64) - 1
    # Full-grid window: the split-step scheme is unitary, so the phase encoding keeps all energy.
    full = KerrFiber(encoding="phase", output_band=2.0)
    torch.testing.assert_close(full(x).sum(1), torch.full((16,), 16.0, dtype=torch.float64))
    # Without the Kerr effect dispersion only moves phases: the power spectrum ignores the phase mask.
    linear = KerrFiber(encoding="phase", nonlinear_phase=0.0)
    torch.testing.assert_close(linear(x), linear(torch.zeros_like(x)).expand(16, -1))
    # With it, the phase mask reshapes the output spectrum.
    nonlinear = KerrFiber(encoding="phase")
    assert float((nonlinear(x) - nonlinear(torch.zeros_like(x))).abs().max()) > 0.1


def test_kerr_fiber_amplitude_encoding():
    device = KerrFiber()
    dark = device(torch.zeros(1, 16, dtype=torch.float64))
    assert float(dark.abs().max()) == 0.0
    x = inputs(device, (0.0, 1.0), batch=64, dtype=torch.float64)
    y = device(x)
    assert float(y.min()) >= 0.0
    # outputs are energy fractions × m: the unshaped pulse's outputs sum to about m
    full = device(torch.ones(1, 16, dtype=torch.float64)).sum()
    assert 15.0 < float(full) <= 16.0 + 1e-9
    # the Kerr effect makes the output spectrum a nonlinear function of the input amplitude
    half = device(x / 2)
    assert float((half - y / 4).abs().max()) > 0.1


# ----------------------------------------------------------------- Oscillators
def test_oscillators_physics():
    device = Oscillators()
    stiffness = device.stiffness()
    torch.testing.assert_close(stiffness, stiffness.T)
    assert float(torch.linalg.eigvalsh(stiffness).min()) > 0  # the network is stable
    x = inputs(device, (-1.0, 1.0), batch=32, dtype=torch.float64)
    y = device(x)
    assert float(device(torch.zeros_like(x)).abs().max()) == 0.0  # at rest without drive
    torch.testing.assert_close(device(-x), -y)  # the Duffing equation is odd in q
    assert 0.05 < float(y.std()) < 5  # outputs of order 1
    assert float((device(x / 4) - y / 4).abs().max()) > 0.01  # the cubic stiffness matters
    linear = Oscillators(nonlinearity=0.0)
    torch.testing.assert_close(linear(x / 4), linear(x) / 4)


def test_oscillators_integrator_converges():
    x = inputs(Oscillators(), (-1.0, 1.0), batch=16, dtype=torch.float64)
    fine = Oscillators(steps=1000)(x)
    default = Oscillators()(x)
    assert float((default - fine).norm() / fine.norm()) < 0.02


# ---------------------------------------------------------------- wrappers
@pytest.mark.parametrize("name", list(WRAPPED))
def test_wrappers_delegate_sizes_params_and_clean_reference(name):
    factory, bounds = WRAPPED[name]
    device = factory()
    inner = device.inner
    assert (device.in_features, device.out_features, device.n_params) == (inner.in_features, inner.out_features, inner.n_params)
    assert torch.equal(device.default_params(), inner.default_params())
    x = inputs(device, bounds, dtype=torch.float64)
    grad_out = torch.ones(x.shape[0], device.out_features, dtype=torch.float64)
    if isinstance(device, Saturating):
        torch.testing.assert_close(device.reference(x), 0.5 * torch.tanh(inner.reference(x) / 0.5))
    else:
        torch.testing.assert_close(device.reference(x), inner.reference(x))
        for mine, theirs in zip(device.exact_vjp(x, None, grad_out), inner.exact_vjp(x, None, grad_out)):
            torch.testing.assert_close(mine, theirs)


def test_noisy_standard_deviation_is_as_requested():
    inner = Linear(16, 16)
    device = Noisy(inner, std=0.2, seed=0)
    x = inputs(inner, (-1.0, 1.0), batch=4096)
    residual = (device(x) - inner(x)).double().flatten()
    count = residual.numel()
    # sample std has standard error std / sqrt(2N); allow five standard errors
    assert abs(float(residual.std()) - 0.2) < 5 * 0.2 / math.sqrt(2 * count)
    assert abs(float(residual.mean())) < 5 * 0.2 / math.sqrt(count)
    relative = Noisy(inner, std=0.1, relative=True, seed=0)
    clean = inner(x)
    ratio = ((relative(x) - clean) / clean).double().flatten()
    assert abs(float(ratio.std()) - 0.1) < 5 * 0.1 / math.sqrt(2 * count)


def test_quantized_levels_and_zero_gradient():
    inner = SHG()
    device = Quantized(inner, bits=3)
    x = inputs(inner, (-1.0, 1.0), batch=512, dtype=torch.float64)
    low, high = device.calibrate(x)
    assert low <= float(inner(x).min()) and float(inner(x).max()) <= high
    y = device(x)
    assert 4 <= y.unique().numel() <= 2**3
    assert float(y.min()) >= low - 1e-12 and float(y.max()) <= high + 1e-12
    assert float((y - inner(x)).abs().max()) <= (high - low) / (2**3 - 1) / 2 + 1e-12
    # Autograd through the ADC: rounding has zero derivative almost everywhere.
    x_leaf = x[:8].clone().requires_grad_(True)
    theta = inner.default_params(torch.float64).requires_grad_(True)
    device(x_leaf, theta).sum().backward()
    assert float(x_leaf.grad.abs().max()) == 0.0 and float(theta.grad.abs().max()) == 0.0
    grad_x, grad_theta = device.exact_vjp(x[:8], None, torch.ones(8, 16, dtype=torch.float64))
    assert float(grad_x.abs().max()) > 1e-3 and float(grad_theta.abs().max()) > 1e-3


def test_quantized_range_given_or_calibrated_on_first_call():
    inner = Linear(4, 4)
    x = inputs(inner, (-1.0, 1.0), batch=64, dtype=torch.float64)
    fixed = Quantized(inner, bits=2, low=-0.5, high=0.5)
    levels = torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    distance_to_nearest_level = (fixed(x).reshape(-1, 1) - levels).abs().min(1).values
    assert float(distance_to_nearest_level.max()) < 1e-12
    automatic = Quantized(inner, bits=8)
    automatic(x)
    assert automatic.low < float(inner(x).min()) and automatic.high > float(inner(x).max())
    with pytest.raises(ValueError):
        Quantized(inner, low=0.0)


def test_saturating_is_bounded_and_smooth():
    device = Saturating(Linear(5, 3), level=0.5)
    x = 3 * inputs(device, (-1.0, 1.0), batch=64, dtype=torch.float64)
    y = device(x)
    assert 0.45 < float(y.abs().max()) < 0.5
    torch.testing.assert_close(y, device.reference(x))
    grad_out = torch.ones(64, 3, dtype=torch.float64)
    grad_x, _ = device.exact_vjp(x, None, grad_out)
    clean = device.inner(x)
    expected = (1 - torch.tanh(clean / 0.5) ** 2) @ device.inner.matrix()
    torch.testing.assert_close(grad_x, expected)


def test_drifting_gain_and_offset_random_walk():
    inner = Linear(5, 3)
    device = Drifting(inner, rate=0.05, seed=1)
    x = inputs(inner, (-1.0, 1.0), batch=8, dtype=torch.float64)
    outputs = []
    for _ in range(50):
        y = device(x)
        torch.testing.assert_close(y, inner(x) * device.gain + device.offset)
        outputs.append(y)
    assert device.calls == 50
    assert not torch.allclose(outputs[0], outputs[-1])
    torch.testing.assert_close(device.reference(x), inner(x))  # the reference does not drift
    # after 50 steps the walk has moved by about rate·sqrt(50) ≈ 0.35 (per entry)
    spread = float(torch.cat([device.log_gain, device.offset]).abs().mean())
    assert 0.05 < spread < 1.0
    device.reset()
    torch.testing.assert_close(device(x), outputs[0])


def test_faulty_error_and_nan_rates_within_binomial_bounds():
    inner = Linear(2, 2)
    x = torch.ones(4, 2)
    calls = 2000
    failing = Faulty(inner, error_rate=0.1, seed=0)
    errors = 0
    for _ in range(calls):
        try:
            failing(x)
        except RuntimeError as err:
            assert "injected fault" in str(err)
            errors += 1
    assert abs(errors - calls * 0.1) < 4 * math.sqrt(calls * 0.1 * 0.9)
    assert failing.errors == errors and failing.calls == calls

    poisoning = Faulty(inner, nan_rate=0.2, seed=0)
    nan_calls = 0
    for _ in range(calls):
        bad_rows = torch.isnan(poisoning(x)).any(1)
        assert int(bad_rows.sum()) <= 1
        if bad_rows.any():
            assert bool(torch.isnan(poisoning.inner(x)).any()) is False
            nan_calls += 1
    assert abs(nan_calls - calls * 0.2) < 4 * math.sqrt(calls * 0.2 * 0.8)
    assert poisoning.nan_calls == nan_calls


def test_faulty_latency():
    device = Faulty(Linear(2, 2), latency=0.05)
    start = time.perf_counter()
    device(torch.ones(1, 2))
    assert time.perf_counter() - start >= 0.05


# ---------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("name", list(ALL))
def test_devices_run_on_cuda_like_on_cpu(name):
    factory, bounds = ALL[name]
    x = inputs(factory(), bounds, batch=8, dtype=torch.float64)
    cpu, cuda = factory(), factory()
    y_cpu = cpu(x)
    y_cuda = cuda(x.cuda())
    assert y_cuda.device.type == "cuda" and y_cuda.dtype == torch.float64
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, equal_nan=True)
    grad_out = torch.ones_like(y_cpu)
    for on_cuda, on_cpu in zip(cuda.exact_vjp(x.cuda(), None, grad_out.cuda()), cpu.exact_vjp(x, None, grad_out)):
        if on_cpu is not None:
            torch.testing.assert_close(on_cuda.cpu(), on_cpu)
