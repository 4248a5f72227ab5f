"""Quick runs of ``destroy-jacobian`` and ``activations``: files, structure and the direction of key results."""

import json

import pytest
import torch

from blackgrad.experiments import activations, destroy_jacobian, load


@pytest.fixture(scope="module")
def destroy(tmp_path_factory):
    out = tmp_path_factory.mktemp("destroy")
    return out, destroy_jacobian.run(destroy_jacobian.Config.quick(), out, progress=False)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("activations")
    return out, activations.run(activations.Config.quick(), out, progress=False)


def _check_result(out, result, name):
    assert result["name"] == name and result["title"]
    for figure in result["figures"]:
        assert figure.endswith(".png") and (out / figure).stat().st_size > 10_000
    assert json.loads((out / "results.json").read_text())["claims"] == result["claims"]
    assert result["claims"] and all(set(c) == {"claim", "measured", "holds"} for c in result["claims"])


def test_destroy_jacobian_is_registered_and_writes_its_results(destroy):
    out, result = destroy
    assert load("destroy-jacobian") is destroy_jacobian
    _check_result(out, result, "destroy-jacobian")
    assert len(result["figures"]) == 4
    assert set(result["stability"][4]) == set(destroy_jacobian.Config.quick().stability_lrs)


def test_destroy_jacobian_direction_of_key_results(destroy):
    _, result = destroy
    config = destroy_jacobian.Config.quick()
    p, gammas = list(config.flip_probabilities), list(config.gammas)
    for depth in config.depths:
        flips = result["flip"]["grad_theta"][depth]
        assert flips[p.index(0.0)]["mean"] > 0.9  # unperturbed: near the clean maximum of 1
        assert abs(flips[p.index(0.5)]["mean"] - 0.5) < 0.15  # ∇θ pure noise: chance
        assert flips[p.index(0.45)]["mean"] > 0.75  # p = 0.45 still learns
        assert result["power"]["grad_theta"][depth][gammas.index(0.0)]["mean"] > 0.9  # sign-only ∇θ trains
    # Flipping ∇x at p = 0.5 leaves the last layer exact: better than chance where ∇θ noise is not.
    shallow = config.depths[0]
    assert result["flip"]["grad_x"][shallow][p.index(0.5)]["mean"] > 0.8


def test_destroy_jacobian_training_repeats_exactly():
    config = destroy_jacobian.Config.quick()
    config.steps = 30
    conditions = destroy_jacobian._conditions(config)
    first = destroy_jacobian._run_depth(config, 2, conditions)
    second = destroy_jacobian._run_depth(config, 2, conditions)
    assert all(torch.equal(first[c], second[c]) for c in conditions)


def test_activations_is_registered_and_writes_its_results(zoo):
    out, result = zoo
    assert load("activations") is activations
    _check_result(out, result, "activations")
    assert set(result["table"]) == {"xor", "digits"}


def test_activations_direction_of_key_results(zoo):
    _, result = zoo
    xor, digits = result["table"]["xor"], result["table"]["digits"]
    assert xor["identity"]["mean"] < 0.65  # a linear model cannot do XOR
    assert xor["cantor"]["mean"] > xor["identity"]["mean"] + 0.15  # the staircase's nonlinearity is used
    for name in ("relu", "sin"):
        assert xor[name]["mean"] > 0.9 and digits[name]["mean"] > 0.9
    assert xor["threshold_sigmoid"]["mean"] > 0.85  # threshold forward trains through its sigmoid backward
    assert digits["perlin"]["mean"] < digits["relu"]["mean"]


def test_activations_rejects_unknown_names(tmp_path):
    config = activations.Config.quick()
    config.activations = ("relu", "swish")
    with pytest.raises(ValueError, match="swish"):
        activations.run(config, tmp_path, progress=False)
