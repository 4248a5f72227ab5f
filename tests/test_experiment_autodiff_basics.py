"""The ``autodiff-basics`` experiment: six derivatives of z_20(x) = sin(z_19 x) + x."""

import numpy as np
import pytest

from blackgrad.experiments import autodiff_basics as ad

XS = np.array([0.0, 0.3, 1.0, 1.29, 1.5])


def test_one_step_by_hand():
    # z_1 = sin(0) + x = x, so dz_1/dx = 1; z_2 = sin(x²) + x, dz_2/dx = 2x cos(x²) + 1
    x = np.array([0.7])
    assert ad.derivative_analytic(x, 1)[0] == 1.0
    expected = 2 * 0.7 * np.cos(0.49) + 1
    for method in (ad.derivative_analytic, ad.derivative_forward, ad.derivative_reverse,
                   ad.derivative_autograd):
        assert method(x, 2)[0] == pytest.approx(expected, rel=1e-15), method.__name__


@pytest.mark.parametrize("method", [ad.derivative_forward, ad.derivative_reverse,
                                    ad.derivative_autograd])
def test_exact_methods_agree_with_the_recursion(method):
    np.testing.assert_allclose(method(XS), ad.derivative_analytic(XS), rtol=1e-13, atol=1e-15)


def test_complex_step_is_exact_and_central_differences_are_not():
    reference = ad.derivative_analytic(XS)
    np.testing.assert_allclose(ad.derivative_complex_step(XS, 1e-20), reference, rtol=1e-13)
    central = ad.derivative_central(XS, 1e-6)
    error = np.abs(central - reference).max()
    assert 1e-13 < error < 1e-7  # good, but far from machine precision
    # cancellation: a tiny step makes central differences useless
    assert np.abs(ad.derivative_central(XS, 1e-15) - reference).max() > 1e-3


def test_dual_numbers():
    x = ad.Dual(2.0, 1.0)
    y = 3.0 * x * x + x + 1.0  # 3x² + x + 1: value 15, derivative 6x + 1 = 13
    assert (y.value, y.tangent) == (15.0, 13.0)
    s = (x * x).sin()
    assert s.tangent == pytest.approx(np.cos(4.0) * 4.0)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("autodiff")
    return ad.run(ad.Config.quick(), out, progress=False), out


def test_quick_run_outputs(quick_run):
    result, out = quick_run
    assert result["name"] == "autodiff-basics"
    assert set(result["figures"]) == {"function_and_derivative.png", "step_size_error.png"}
    for name in result["figures"] + ["results.json"]:
        assert (out / name).stat().st_size > 1000
    assert len(result["table"]) == len(ad.Config.quick().points)
    assert all(c["holds"] for c in result["claims"]), [c for c in result["claims"] if not c["holds"]]


def test_quick_run_agreement_values(quick_run):
    result, _ = quick_run
    worst = result["max_relative_error"]
    for name in ("forward_dual", "reverse_tape", "torch_autograd", "complex_step"):
        assert worst[name] < 1e-13, name
    assert 1e-13 < worst["central_best_h"] < 1e-6


def test_quick_run_step_sweep(quick_run):
    result, _ = quick_run
    sweep = result["step_sweep"]
    h = np.asarray(sweep["h"])
    central = np.asarray(sweep["central_relative_error"])
    complex_ = np.asarray(sweep["complex_step_relative_error"])
    best = int(np.argmin(central))
    # V shape: the best step is interior, far better than both ends
    assert 1e-9 < h[best] < 1e-3
    assert central[0] > 1e3 * central[best] and central[-1] > 1e3 * central[best]
    # the complex step keeps improving: machine precision for every tiny step,
    # orders of magnitude below the best central difference
    assert complex_[h <= 1e-8].max() < 1e-13
    assert complex_[h <= 1e-8].max() < 1e-3 * central[best]
