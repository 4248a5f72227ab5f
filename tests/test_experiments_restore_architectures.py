"""The ``restore-jacobian`` and ``backward-architectures`` experiments: quick runs and their key results."""

import json
import math

import numpy as np
import pytest
import torch

from blackgrad.experiments import backward_architectures as ba
from blackgrad.experiments import restore_jacobian as rj


# ----------------------------------------------------------------------------- restore-jacobian


@pytest.fixture(scope="module")
def restore(tmp_path_factory):
    out = tmp_path_factory.mktemp("restore")
    config = rj.Config.quick()
    return rj.run(config, out, progress=False), config, out


def _run(result, **fields):
    matches = [r for r in result["runs"] if all(r[k] == v for k, v in fields.items())]
    assert len(matches) == 1, fields
    return matches[0]


def test_restore_writes_its_figures_and_results(restore):
    result, _, out = restore
    assert result["name"] == "restore-jacobian"
    assert len(result["figures"]) == 4
    for name in result["figures"] + ["results.json"]:
        assert (out / name).stat().st_size > 1000, name
    assert json.loads((out / "results.json").read_text())["claims"] == result["claims"]
    for row in result["claims"]:
        assert set(row) == {"claim", "measured", "holds"} and isinstance(row["holds"], bool)


def test_with_the_structure_given_the_jacobian_is_restored(restore):
    result, config, _ = restore
    n, m = config.high
    run = _run(result, dim_i=n, dim_o=m, dim_sample=rj.dim_sample_for(n, min(config.sample_fractions)),
               loss="mse", messup=1.0, lr=config.lr, fixed_epochs=None)
    # the relative error falls by more than 10x and the signs go from chance to (almost) all right
    assert run["final"]["relative_error"] < run["initial_relative_error"] / 10
    assert run["initial_sign_agreement"] < 0.7 and run["final"]["sign_agreement"] > 0.95
    assert run["final"]["scale_ratio"] == pytest.approx(1, abs=0.1)
    # probes: batch x dim_sample per epoch, epochs from seed 001's normalisation
    assert run["probes"] == run["epochs"] * config.batch * run["dim_sample"]
    assert run["probes_per_entry"] == pytest.approx(config.probes_per_entry, rel=0.05)


def test_more_directions_per_sample_mean_fewer_epochs_and_a_worse_fit(restore):
    result, config, _ = restore
    rows = [r for r in result["sampling"] if tuple(r["dims"]) == config.high]
    rows.sort(key=lambda r: r["fraction"])
    # same probes per entry: the run with the fewest directions per sample takes the most optimiser steps
    assert [r["epochs"] for r in rows] == sorted((r["epochs"] for r in rows), reverse=True)
    assert rows[0]["final_relative_error"] < rows[-1]["final_relative_error"] / 3


def test_cosine_loss_is_blind_to_scale_and_mse_is_slowed_by_a_large_one(restore):
    result, config, _ = restore
    size = config.scale_dims[-1]
    final = {(r["loss"], r["messup"]): r for r in result["initial_scale"]
             if tuple(r["dims"]) == tuple(size) and r["lr"] == config.lr}
    for messup in config.messups:  # the cosine loss never fixes the norm ...
        assert abs(final[("cosine", messup)]["final_scale_ratio"] - 1) > 0.2
    for messup in (0.01, 1.0):  # ... though it finds the direction; MSE gets both
        assert final[("cosine", messup)]["final_direction_cosine"] > 0.9
        assert final[("mse", messup)]["final_scale_ratio"] == pytest.approx(1, abs=0.1)
    big = max(config.messups)
    assert final[("mse", big)]["final_relative_error"] > 100 * final[("mse", 1.0)]["final_relative_error"]


def test_loss_rise_detector():
    epochs = np.arange(60)
    falling = np.exp(-epochs / 10.0)
    signs = np.linspace(0.5, 1.0, 60)
    assert rj.loss_rise(falling, signs, entries=64, rise_min=0.1, sign_gain=0.01) is None
    rising = falling.copy()
    rising[20:40] = falling[20] * np.linspace(1, 3, 20)  # the loss triples while the signs keep improving
    rising[40:] = falling[40:] * rising[39] / falling[40]
    event = rj.loss_rise(rising, signs, entries=64, rise_min=0.1, sign_gain=0.01)
    assert event is not None and event["loss_ratio"] >= 1.1 and event["sign_to"] > event["sign_from"]
    assert 15 <= event["start"] < event["end"]
    # flat signs: no event however the loss moves
    assert rj.loss_rise(rising, np.full(60, 0.8), entries=64, rise_min=0.1, sign_gain=0.01) is None


def test_train_restore_is_seeded():
    config = rj.Config(batch=4)
    spec = rj.RunSpec(4, 3, 2, "mse+cosine", 1.0, 0.1, fixed_epochs=5)
    first, second = rj.train_restore(spec, config), rj.train_restore(spec, config)
    for key in rj.METRICS:
        np.testing.assert_array_equal(first[key], second[key])


# ----------------------------------------------------------------------------- backward-architectures


@pytest.fixture(scope="module")
def architectures(tmp_path_factory):
    out = tmp_path_factory.mktemp("architectures")
    config = ba.Config.quick()
    return ba.run(config, out, progress=False), config, out


def test_architectures_writes_its_figures_and_results(architectures):
    result, config, out = architectures
    assert result["name"] == "backward-architectures"
    for name in result["figures"] + ["results.json"]:
        assert (out / name).stat().st_size > 1000, name
    assert len(result["runs"]) == len(config.problems) * len(config.architectures) * len(config.widths) * config.seeds
    for row in result["claims"]:
        assert set(row) == {"claim", "measured", "holds"} and isinstance(row["holds"], bool)


def test_every_architecture_learns_the_backward_of_a_linear_map(architectures):
    result, config, _ = architectures
    for run in result["runs"]:
        if run["problem"] == "linear":
            assert run["final_cosine"] > (0.99 if run["architecture"] == "mlp" else 0.98), run["architecture"]
            assert run["curve"]["cosine"][0] < 0.5  # it learned: it did not start there
            assert run["curve"]["probes"][-1] == config.epochs * config.batch


def test_training_raises_the_fidelity_on_the_product_of_powers(architectures):
    result, _, _ = architectures
    for run in result["runs"]:
        if run["problem"] == "power":
            assert run["final_cosine"] > run["curve"]["cosine"][0] + 0.3, run["architecture"]
            assert run["final_cosine"] > 0.7, run["architecture"]


def test_product_of_powers_and_its_exact_vjp():
    exponents, fun = ba.product_of_powers(5, 4, seed=3)
    assert set(exponents.unique().tolist()) <= {-1.0, 0.0, 1.0}
    x = torch.rand(6, 5, dtype=torch.float64) + 0.5
    y = fun(x)
    expected = torch.prod(x[:, None, :] ** exponents, dim=2)
    torch.testing.assert_close(y, expected)
    g = torch.randn(6, 4, dtype=torch.float64)
    jacobian = exponents * y[:, :, None] / x[:, None, :]  # ∂f_i/∂x_j = P_ij f_i / x_j
    problem = ba.make_problem("power", ba.Config(n=5, m=4, seed=3))
    torch.testing.assert_close(problem.exact_vjp(x, g), torch.einsum("bm,bmd->bd", g, jacobian))


def test_architectures_have_the_advertised_parameter_counts():
    mlp, net = ba.make_features("mlp", 8, 16, 32), ba.make_features("loglinexp", 8, 16, 32)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(mlp) == count(net)
    direct = ba.make_features("loglinexp-direct", 8, 16, 32)
    assert count(direct) == 8 * 32 + 32 + 32 * 16 + 16
    with pytest.raises(ValueError, match="unknown architecture"):
        ba.make_features("transformer", 8, 16, 32)
    with torch.no_grad():
        assert math.isfinite(float(direct(torch.rand(3, 8) + 0.1).sum()))
