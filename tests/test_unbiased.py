"""The Unbiased wrapper's control-variate coefficient: unbiasedness, variance, convergence, state, options.

The device is linear (``y = x Aᵀ``), so the one-sided difference slope is
exact and the VJP ``u = g A`` is known exactly; the inner estimator returns
``scale·u + error`` for a fixed, known error, so that the optimal coefficient
``c* = u·v / |v|²`` and every variance ``(d−1)/k · |u − c·v|²`` can be worked
out by hand.  Every estimate is drawn at one point ``x0`` with one ``g0``,
repeated over the batch, so that the rows of a pass are independent draws.
"""

import copy
import math

import numpy as np
import pytest
import torch

from blackgrad.estimators import SPSA, Estimator, LearnedVJP, Unbiased
from blackgrad.estimators.base import VJPQuery

D, M = 16, 6
gen = torch.Generator().manual_seed(11)
A = torch.randn(M, D, generator=gen, dtype=torch.float64)
X0 = torch.randn(1, D, generator=gen, dtype=torch.float64)
G0 = torch.randn(1, M, generator=gen, dtype=torch.float64)
ACTIVE = torch.ones(D, dtype=torch.bool)
ACTIVE[-1] = False  # one coordinate nobody needs: it must get no probe
DA = int(ACTIVE.sum())  # active coordinates


def device(x):
    return x @ A.T.to(x.dtype)


def exact_vjp(x, g):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(device(x), x, g)
    return grad


U = exact_vjp(X0, G0)[0] * ACTIVE  # the exact VJP on the active coordinates


def orthogonal_error(size, seed):
    """A fixed error of norm ``size·|u|`` orthogonal to ``u`` (active coordinates only)."""
    e = torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * ACTIVE
    e = e - (e @ U) / (U @ U) * U
    return size * U.norm() * e / e.norm()


class Known(Estimator):
    """An inner estimator whose VJP is ``scale·(exact VJP) + error``; it spends no probes."""

    def __init__(self, scale=1.0, error=None):
        self.scale = scale
        self.error = torch.zeros(D, dtype=torch.float64) if error is None else error

    def vjp(self, prober, query):
        return self.scale * exact_vjp(query.alpha, query.grad_out) + self.error

    def probe_cost(self, d, m, batch):
        return 0

    def at_x0(self):
        return (self.scale * U + self.error) * ACTIVE


class Counting:
    """The prober: evaluates the device and counts the rows."""

    def __init__(self):
        self.rows = 0

    def __call__(self, rows):
        self.rows += rows.shape[0]
        return device(rows)


def query(batch):
    x, g = X0.expand(batch, D), G0.expand(batch, M)
    return VJPQuery(x, device(x), g, ACTIVE, torch.zeros(D, dtype=torch.bool))


def passes(estimator, count, batch):
    """``count`` backward passes of ``batch`` rows at ``x0``: estimates ``(count, batch, d)``."""
    prober, q = Counting(), query(batch)
    out = torch.stack([estimator.vjp(prober, q) for _ in range(count)])
    assert prober.rows == count * estimator.probe_cost(DA, M, batch)
    return out[..., ACTIVE]


def analytic_c(inner):
    v = inner.at_x0()
    return float(U @ v / (v @ v))


def analytic_variance(inner, c, k=1):
    """``E|ĝ − u|²`` per sample for Rademacher directions: ``(d−1)/k · |u − c·v|²``."""
    return (DA - 1) / k * float((U - c * inner.at_x0()).pow(2).sum())


GOOD = dict(error=orthogonal_error(0.2, seed=1))  # cos(u, v) = 0.98
BAD = dict(error=orthogonal_error(3.0, seed=2) - U)  # v ⟂ u and 3× as long: worthless
SHRUNK = dict(scale=0.5, error=orthogonal_error(0.05, seed=3))  # the right direction, half the size


# ---------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize("coefficient", ["optimal", 1.0, 0.3])
@pytest.mark.parametrize("inner", [BAD, SHRUNK], ids=["bad", "shrunk"])
def test_the_mean_of_many_estimates_is_the_exact_vjp(coefficient, inner):
    inner = Known(**inner)
    estimator = Unbiased(inner, seed=7, coefficient=coefficient, gate=None)
    passes(estimator, 5, 200)  # warm-up: the online coefficient has moved off its start
    draws = passes(estimator, 40, 200).reshape(-1, DA)
    mean, sem = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    exact, wrong = U[ACTIVE], inner.at_x0()[ACTIVE]
    # every coordinate within 4 standard errors of the exact VJP ...
    assert ((mean - exact).abs() < 4 * sem).all(), ((mean - exact) / sem).abs().max()
    # ... and the bound is tight enough to see the inner model's bias
    assert ((wrong - exact).abs() > 4 * sem).sum() >= DA // 2


def test_the_coefficient_comes_from_past_passes_only():
    """Each pass equals the fixed-coefficient estimate with the ``c`` read before it."""
    inner = Known(**SHRUNK)
    online = Unbiased(inner, seed=3)
    prober, q = Counting(), query(8)
    assert online.c == Unbiased.START == 1.0  # before any data
    for _ in range(4):
        before = online.c
        fixed = Unbiased(inner, coefficient=before)
        fixed.generator.set_state(online.generator.get_state())
        assert torch.equal(online.vjp(prober, q), fixed.vjp(prober, q))
        assert online.c != before  # it learned from the pass just made
    assert abs(online.c - analytic_c(inner)) < 0.2


# -------------------------------------------------------------------- variance
def spread(estimates):
    """Mean squared error per sample, ``E|ĝ − u|²`` (the variance: every estimate here is unbiased)."""
    return float((estimates - U[ACTIVE]).pow(2).sum(-1).mean())


@pytest.mark.parametrize("inner", [GOOD, BAD, SHRUNK], ids=["good", "bad", "shrunk"])
def test_the_optimal_coefficient_is_never_worse_than_spsa_or_the_classic_correction(inner, capsys):
    inner = Known(**inner)
    seed, warm, count, batch = 5, 10, 30, 256

    def measured(estimator):
        passes(estimator, warm, batch)  # the same directions for all three (same seed)
        return spread(passes(estimator, count, batch))

    optimal = Unbiased(inner, seed=seed, gate=None)
    var = {
        "optimal": measured(optimal),
        "spsa": measured(SPSA(directions=1, antithetic=False, seed=seed, gate=None)),
        "c=1": measured(Unbiased(inner, seed=seed, coefficient=1.0, gate=None)),
    }
    c_star = analytic_c(inner)
    theory = {"optimal": analytic_variance(inner, c_star), "spsa": analytic_variance(inner, 0.0), "c=1": analytic_variance(inner, 1.0)}
    with capsys.disabled():
        print(
            f"\n  c*={c_star:.3f} c={optimal.c:.3f}  "
            + "  ".join(f"{k}: {var[k]:.4g} (theory {theory[k]:.4g})" for k in var)
            + f"  |u|²={float(U @ U):.4g}"
        )
    for key in var:  # the measurement agrees with (d−1)|u − c·v|²: the test measures what it says
        assert abs(var[key] - theory[key]) <= 0.1 * theory[key] + 1e-3 * float(U @ U), (key, var, theory)
    assert var["optimal"] <= 1.10 * min(var["spsa"], var["c=1"]), var


def test_a_shrunk_model_is_where_the_optimal_coefficient_gains_most():
    inner = Known(**SHRUNK)
    optimal, classic = Unbiased(inner, seed=2, gate=None), Unbiased(inner, seed=2, coefficient=1.0, gate=None)
    passes(optimal, 10, 128), passes(classic, 10, 128)
    assert spread(passes(optimal, 20, 128)) < 0.05 * spread(passes(classic, 20, 128))
    assert optimal.c > 1.5  # not clipped to [0, 1]: c* ≈ 2 is right here


# ----------------------------------------------------------------- convergence
@pytest.mark.parametrize(
    "options",
    [dict(), dict(distribution="gaussian", directions=3), dict(antithetic=True, directions=2)],
    ids=["rademacher", "gaussian-k3", "antithetic-k2"],
)
@pytest.mark.parametrize("inner", [GOOD, BAD, SHRUNK], ids=["good", "bad", "shrunk"])
def test_the_coefficient_converges_to_the_analytic_optimum(inner, options):
    inner = Known(**inner)
    estimator = Unbiased(inner, seed=4, **options)
    trail = []
    for _ in range(30):
        passes(estimator, 1, 64)
        trail.append(estimator.c)
    c_star = analytic_c(inner)  # u·v/|v|²: for Rademacher and Gaussian directions, any k
    recent = trail[-10:]
    assert max(abs(c - c_star) for c in recent) < 0.05, (c_star, recent)


def test_no_active_coordinate_costs_nothing_and_leaves_the_coefficient():
    estimator = Unbiased(Known(**GOOD), seed=1)
    passes(estimator, 3, 16)
    c = estimator.c
    q = query(4)
    none = VJPQuery(q.alpha, q.y, q.grad_out, torch.zeros(D, dtype=torch.bool), q.shared)
    prober = Counting()
    estimator.vjp(prober, none)
    assert prober.rows == 0 and estimator.c == c


# ---------------------------------------------------- the two fixed endpoints
def test_coefficient_one_is_the_classic_correction_and_zero_is_plain_spsa():
    inner, q, k = Known(**BAD), query(8), 3
    classic = Unbiased(inner, seed=6, directions=k, coefficient=1.0, gate=None)
    replay = copy.deepcopy(classic.generator)
    got = classic.vjp(device, q)
    delta = q.directions(k, replay)
    slope = torch.stack([device(q.alpha + 1.0 * d) - q.y for d in delta])  # linear: any step is exact
    v = inner.vjp(device, q) * ACTIVE
    residual = torch.einsum("bm,kbm->kb", q.grad_out, slope) - torch.einsum("bd,kbd->kb", v, delta)
    expected = v + torch.einsum("kb,kbd->bd", residual, delta) / k
    assert torch.allclose(got[:, ACTIVE], expected[:, ACTIVE], rtol=1e-6, atol=1e-6 * float(U.norm()))
    plain = Unbiased(inner, seed=6, directions=k, coefficient=0.0, gate=None).vjp(device, q)
    spsa = SPSA(directions=k, antithetic=False, seed=6, gate=None).vjp(device, q)
    assert torch.allclose(plain[:, ACTIVE], spsa[:, ACTIVE], rtol=1e-6, atol=1e-6 * float(U.norm()))


# ------------------------------------------------------------------------ state
@pytest.mark.parametrize("learned", [False, True], ids=["known", "learned-vjp"])
def test_state_dict_round_trip_reproduces_the_run(learned):
    def make(seed):
        inner = LearnedVJP(rank=4, hidden=(8,), probes=0, seed=seed) if learned else Known(**SHRUNK)
        return Unbiased(inner, seed=seed, gate=None)  # the coefficient's state, not the gate's

    first = make(1)
    passes(first, 4, 16)
    saved = copy.deepcopy(first.state_dict())
    assert first.c != Unbiased.START  # the coefficient has something to carry
    expected = passes(first, 4, 16), first.c

    resumed = make(99)  # different seeds: everything must come from the state
    resumed.load_state_dict(copy.deepcopy(saved))
    assert resumed.c == saved["coefficient"]["c"]
    got = passes(resumed, 4, 16), resumed.c
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]

    # without the coefficient's state (same generator and inner model) the run differs
    forgetful = make(99)
    forgetful.load_state_dict({k: v for k, v in copy.deepcopy(saved).items() if k != "coefficient"})
    assert forgetful.c == Unbiased.START
    assert not torch.equal(passes(forgetful, 4, 16), expected[0])


def test_a_fixed_coefficient_stays_fixed_when_loading_an_online_state():
    online = Unbiased(Known(**SHRUNK), seed=1)
    passes(online, 3, 16)
    fixed = Unbiased(Known(**SHRUNK), seed=1, coefficient=0.25)
    fixed.load_state_dict(online.state_dict())
    assert fixed.c == 0.25
    passes(fixed, 2, 16)
    assert fixed.c == 0.25


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "value, error",
    [
        ("Optimal", ValueError),
        ("auto", ValueError),
        ("", ValueError),
        (math.nan, ValueError),
        (float("inf"), ValueError),
        (-math.inf, ValueError),
        (True, TypeError),
        (False, TypeError),
        (None, TypeError),
        ([1.0], TypeError),
        (torch.tensor(1.0), TypeError),
    ],
)
def test_bad_coefficients_are_refused_by_name(value, error):
    with pytest.raises(error, match="coefficient"):
        Unbiased(Known(), coefficient=value)


@pytest.mark.parametrize("value", ["optimal", 0, 1, 0.5, -0.25, 2.0, np.float64(0.7)])
def test_good_coefficients_are_accepted(value):
    estimator = Unbiased(Known(), coefficient=value)
    assert estimator.c == (Unbiased.START if value == "optimal" else float(value))
    assert "coefficient=" in repr(estimator)
    with pytest.raises(AttributeError):
        estimator.c = 0.5  # read-only: change it through the option
