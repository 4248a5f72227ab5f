"""The loss zoo (blackgrad.losses) and the quick ``losses`` experiment."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blackgrad import losses as L

# two samples in ℝ²: ⟨x|y⟩ = 9 and 0, |x| = 5 and 1, |y| = 3 and 2
X = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
Y = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
GEN_HALF = 9 / (5**0.5 * 3**1.5)  # GenSim_{1/2} of the first sample


@pytest.mark.parametrize(
    "loss, expected",
    [
        (L.mse, (16 + 5) / 2),  # squares summed over d, averaged over the batch
        (L.log_mse, math.log(10.5 + L.EPS)),
        (L.cosine_loss, (0.4 + 1.0) / 2),
        (L.log_cosine_loss, math.log(0.7 + L.EPS)),
        (L.mse_dot, (0.0 + 1.0) / 2),
        (L.gen_sim_loss, ((GEN_HALF - 1) ** 2 + 1.0) / 2),
        (L.cosine_plus_mse, (0.4 + 16 + 1.0 + 5) / 2),
        (L.cosine_plus_mse_dot, (0.4 + 0.0 + 1.0 + 1.0) / 2),
    ],
)
def test_hand_computed_values(loss, expected):
    assert float(loss(X, Y)) == pytest.approx(expected, rel=1e-12)


def test_similarities_by_hand():
    torch.testing.assert_close(L.cos_sim(X, Y), torch.tensor([0.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(L.dot_sim(X, Y), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(L.gen_sim(X, Y, 0.5), torch.tensor([GEN_HALF, 0.0], dtype=torch.float64))


def test_sign_losses_by_hand():
    x = torch.tensor([[1.0, -2.0, 3.0]])
    y = torch.tensor([[3.0, 4.0, -1.0]])
    # two disagreeing signs: each gives max(0, 1 − (−1)) = 2, with the seed's leading minus
    assert float(L.sign_hinge_loss(x, y)) == -4.0
    assert float(L.sign_hinge_loss(y, y)) == 0.0
    assert float(L.relu_sign_loss(x, y)) == 8.0 + 3.0


def test_reduction_none_and_batch_shapes():
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    y = torch.randn(4, 3, 2, dtype=torch.float64)
    for name, loss in L.LOSSES.items():
        per_sample = loss(x, y, reduction="none")
        assert per_sample.shape == (4, 3), name
        assert loss(x, y).shape == (), name
    # for non-log losses the mean of the per-sample values is the batch loss
    torch.testing.assert_close(L.mse(x, y), L.mse(x, y, reduction="none").mean())
    with pytest.raises(ValueError, match="reduction"):
        L.mse(x, y, reduction="sum")
    with pytest.raises(ValueError, match="alpha"):
        L.gen_sim(x, y, alpha=2.5)


def test_log_losses_are_log_of_the_batch_loss():
    torch.testing.assert_close(L.log_mse(X, Y), torch.log(L.mse(X, Y) + L.EPS))
    torch.testing.assert_close(L.log_cosine_loss(X, Y), torch.log(L.cosine_loss(X, Y) + L.EPS))
    # a perfect fit is finite thanks to eps
    assert float(L.log_mse(Y, Y)) == pytest.approx(math.log(L.EPS))


SMOOTH = ["mse", "log_mse", "cosine_loss", "log_cosine_loss", "mse_dot", "gen_sim_loss",
          "cosine_plus_mse", "cosine_plus_mse_dot", "relu_sign_loss"]


@pytest.mark.parametrize("name", SMOOTH)
def test_gradcheck(name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    # relu_sign_loss is piecewise linear: random points are almost surely off its kinks
    assert torch.autograd.gradcheck(L.LOSSES[name], (x, y))


def test_sign_hinge_has_zero_gradient():
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(L.sign_hinge_loss(x, torch.ones(6, 2, dtype=torch.float64)), x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_gen_sim_interpolates_dot_and_cos():
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randn(20, 4, dtype=torch.float64)
    torch.testing.assert_close(L.gen_sim(x, y, 1.0), L.cos_sim(x, y), rtol=1e-14, atol=0)
    torch.testing.assert_close(L.gen_sim(x, y, 0.0), L.dot_sim(x, y), rtol=1e-14, atol=0)
    torch.testing.assert_close(L.gen_sim_loss(x, y, alpha=0.0), L.mse_dot(x, y))
    torch.testing.assert_close(L.gen_sim_loss(x, y, alpha=1.0), ((1 - L.cos_sim(x, y)) ** 2).mean())


def test_eps_guards_at_zero():
    zero = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    for loss in (L.cosine_loss, L.log_cosine_loss, L.cosine_plus_mse_dot, L.gen_sim_loss):
        value = loss(zero, y)
        (grad,) = torch.autograd.grad(value, zero)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(L.cos_sim(zero.detach(), y)) == 0.0
    assert float(L.dot_sim(y, torch.zeros(1, 2))) == 0.0


vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3).filter(
    lambda v: sum(c * c for c in v) > 1e-2
)


@settings(max_examples=40, deadline=None)
@given(x=vectors, y=vectors, a=st.floats(1e-2, 1e2), b=st.floats(1e-2, 1e2))
def test_cos_sim_scale_invariance_and_tangential_gradient(x, y, a, b):
    x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(y, dtype=torch.float64)
    c = L.cos_sim(x, y)
    torch.testing.assert_close(L.cos_sim(a * x, b * y), c, rtol=1e-9, atol=1e-12)
    (grad,) = torch.autograd.grad(L.cosine_loss(x, y), x)
    # the gradient is orthogonal to x: descent turns x without changing |x| (to first order)
    x = x.detach()
    assert abs(float(grad @ x)) <= 1e-9 * float(grad.norm() * x.norm()) + 1e-12


@settings(max_examples=40, deadline=None)
@given(x=vectors, y=vectors, t=st.floats(-5, 5))
def test_dot_sim_ignores_the_orthogonal_part(x, y, t):
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64)
    other = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    orthogonal = other - (other @ y) / (y @ y) * y
    torch.testing.assert_close(L.dot_sim(x + t * orthogonal, y), L.dot_sim(x, y),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- the experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from blackgrad.experiments import losses as experiment

    out = tmp_path_factory.mktemp("losses")
    return experiment.run(experiment.Config.quick(), out, progress=False), out


def test_experiment_outputs(quick_run):
    result, out = quick_run
    assert result["name"] == "losses" and result["title"]
    assert len(result["figures"]) >= 4
    for name in result["figures"] + result["pages"]:
        assert (out / name).stat().st_size > 1000, name
    assert (out / "results.json").exists()
    page = (out / "loss_field.html").read_text()
    for name in L.LOSSES:  # the page offers every library loss
        assert f"{name}:" in page, name


def _runs(result, pair, name):
    return result["descent"][pair][name]


@pytest.mark.parametrize("pair, plain, logged", [("mse", "mse", "log_mse"),
                                                 ("cosine", "cosine_loss", "log_cosine_loss")])
def test_log_loss_overshoots_where_plain_converges_calmly(quick_run, pair, plain, logged):
    result, _ = quick_run
    plain_runs, log_runs = _runs(result, pair, plain), _runs(result, pair, logged)
    # the plain loss never passes the target and its error never grows
    assert all(r["sign_changes"] == 0 and r["max_overshoot"] == 0 and r["increases"] == 0
               for r in plain_runs)
    # every log run crosses the target, and typically by a wide margin
    assert min(r["sign_changes"] for r in log_runs) >= 1
    assert sum(r["max_overshoot"] for r in log_runs) / len(log_runs) > 0.1
    assert max(r["increases"] for r in log_runs) >= 3


def test_experiment_measurements(quick_run):
    result, _ = quick_run
    cosine = result["cosine"]
    assert cosine["scale_invariance_deviation"] < 1e-10
    assert cosine["explosion"]["slope"] == pytest.approx(-1.0, abs=0.02)
    assert cosine["max_radial_cosine"] < 1e-10
    assert result["dot_sim"]["orthogonal_change"] < 1e-12
    single = result["single_minimum"]
    assert single["cosine_plus_mse_dot"]["strict_local_minima"] == 1
    assert single["cosine_plus_mse_dot"]["argmin_distance_to_y"] == pytest.approx(0.0, abs=1e-12)
    for alone in ("cosine_loss", "mse_dot"):  # a whole ray / line of minima each
        assert single[alone]["strict_local_minima"] > 5
        assert single[alone]["sublevel_diameter"] > 4 * single["cosine_plus_mse_dot"]["sublevel_diameter"]


def test_experiment_claims(quick_run):
    result, _ = quick_run
    failing = [c["claim"] for c in result["claims"] if not c["holds"]]
    # the only claim that fails is the sign-hinge loss as first written (its leading minus)
    assert len(failing) == 1 and "max(0, 1 − sgn" in failing[0]
    assert all(c["measured"] for c in result["claims"])
