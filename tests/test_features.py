"""Input features for learned backward models: MultiScaleFourier and RandomFourierFeatures."""

import math

import pytest
import torch

from blackgrad.estimators import DigitalTwin
from blackgrad.nets import MultiScaleFourier, RandomFourierFeatures, embedded, MLP


def test_multiscale_shape_and_out_features():
    features = MultiScaleFourier(6, (0.5, 1, 2))
    z = torch.rand(5, 6) * 2 - 1
    out = features(z)
    assert features.in_features == 6
    assert features.out_features == 6 * (1 + 2 * 3)
    assert out.shape == (5, features.out_features)
    assert torch.equal(out[:, :6], z)  # the raw inputs come first


def test_multiscale_scale_from_first_batch_then_fixed():
    features = MultiScaleFourier(3, (1.0,))
    assert math.isnan(features.scale.item())
    first = torch.tensor([[0.5, -0.25, 0.0], [0.1, 0.2, 0.3]])
    features(first)
    assert features.scale.item() == pytest.approx(0.5)
    features(torch.full((2, 3), 4.0))  # a later, wider batch leaves the scale alone
    assert features.scale.item() == pytest.approx(0.5)
    # one half-period per input scale: sin(π z / s) at z = s/2 is 1
    out = features(torch.tensor([[0.25, 0.0, 0.0]]))
    assert out[0, 3].item() == pytest.approx(1.0, abs=1e-6)  # sin block starts after the 3 raw inputs


def test_multiscale_given_scale_and_frequencies():
    features = MultiScaleFourier(2, (1, 2, 4), scale=2.0)
    assert features.scale.item() == 2.0
    assert torch.allclose(features.frequencies(), torch.tensor([[1.0, 2.0, 4.0]] * 2) * math.pi / 2)
    z = torch.tensor([[1.0, -0.5]])
    out = features(z)
    angles = (z.unsqueeze(-1) * features.frequencies()).flatten(1)
    assert torch.allclose(out, torch.cat([z, angles.sin(), angles.cos()], 1))


def test_all_zero_first_batch_gives_unit_scale():
    features = MultiScaleFourier(2)
    features(torch.zeros(4, 2))
    assert features.scale.item() == 1.0
    assert torch.isfinite(features(torch.ones(1, 2))).all()


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_bad_scale_rejected(scale):
    with pytest.raises(ValueError):
        MultiScaleFourier(2, scale=scale)
    with pytest.raises(ValueError):
        RandomFourierFeatures(2, scale=scale)


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        MultiScaleFourier(2, ())
    with pytest.raises(ValueError):
        RandomFourierFeatures(2, features=0)
    with pytest.raises(ValueError):
        RandomFourierFeatures(2, sigma=0.0)


def test_multiscale_trainable_multiples_get_gradients():
    fixed = MultiScaleFourier(3, (1, 2))
    assert list(fixed.parameters()) == []
    learned = MultiScaleFourier(3, (1, 2), trainable=True)
    assert learned.multiples.shape == (3, 2)
    learned(torch.rand(8, 3)).sum().backward()
    assert learned.multiples.grad is not None and learned.multiples.grad.abs().sum() > 0


def test_scale_survives_state_dict_round_trip():
    source = MultiScaleFourier(3)
    source(torch.tensor([[0.7, 0.0, -0.1]]))
    target = MultiScaleFourier(3)
    target.load_state_dict(source.state_dict())
    z = torch.rand(4, 3)
    assert target.scale.item() == pytest.approx(0.7)
    assert torch.allclose(target(z), source(z))
    # loading an unset scale makes the module take it from its next batch again
    source.load_state_dict(MultiScaleFourier(3).state_dict())
    source(torch.full((1, 3), 0.2))
    assert source.scale.item() == pytest.approx(0.2)


def test_random_features_shape_and_determinism():
    a = RandomFourierFeatures(5, features=16, sigma=2.0, seed=3)
    b = RandomFourierFeatures(5, features=16, sigma=2.0, seed=3)
    c = RandomFourierFeatures(5, features=16, sigma=2.0, seed=4)
    z = torch.rand(7, 5)
    assert a.in_features == 5 and a.out_features == 5 + 2 * 16
    assert a(z).shape == (7, a.out_features)
    assert torch.equal(a.projection, b.projection)
    assert not torch.equal(a.projection, c.projection)
    assert torch.equal(a(z), b(z))
    assert a.projection.std().item() == pytest.approx(2.0, rel=0.3)


def test_random_features_relative_to_scale():
    # doubling the inputs and the scale together leaves the periodic features unchanged
    small = RandomFourierFeatures(4, features=8, scale=1.0)
    large = RandomFourierFeatures(4, features=8, scale=2.0)
    z = torch.rand(3, 4)
    assert torch.allclose(small(z)[:, 4:], large(2 * z)[:, 4:], atol=1e-5)


def test_float64_inputs():
    for features in (MultiScaleFourier(3), RandomFourierFeatures(3, 4)):
        net = embedded(features, 3, lambda width: MLP(width, 2, (8,))).double()
        assert net(torch.rand(4, 3, dtype=torch.float64)).dtype == torch.float64


def test_twin_with_multiscale_embedding_learns_scale_from_its_inputs():
    """As the default embedding of a learned estimator: the scale comes from the first forward batch."""
    twin = DigitalTwin(hidden=(16,), embedding=MultiScaleFourier(3), seed=0)
    alpha = torch.rand(32, 3) * 0.6 - 0.3
    twin.observe(alpha, alpha.sin()[:, :2])
    assert math.isnan(twin.embedding.scale.item())  # observing only stores the rows
    twin.update()  # the first training step runs the model on them
    assert twin.embedding.scale.item() == pytest.approx(alpha.abs().max().item())
    state = twin.state_dict()
    other = DigitalTwin(hidden=(16,), embedding=MultiScaleFourier(3), seed=0)
    other.load_state_dict(state)
    assert other.embedding.scale.item() == pytest.approx(alpha.abs().max().item())


def test_default_multiples_are_half_one_two():
    features = MultiScaleFourier(2, scale=1.0)
    assert features.out_features == 2 * 7
    assert torch.allclose(features.frequencies(), torch.tensor([[0.5, 1.0, 2.0]] * 2) * math.pi)


def test_decay_weights_high_frequencies_down():
    flat = MultiScaleFourier(1, (1, 4), scale=1.0)
    decayed = MultiScaleFourier(1, (1, 4), scale=1.0, decay=1.0)
    z = torch.tensor([[0.1], [0.3]])
    a, b = flat(z), decayed(z)
    # columns: z, sin(π z), sin(4π z), cos(π z), cos(4π z)
    assert torch.allclose(b[:, [0, 1, 3]], a[:, [0, 1, 3]])
    assert torch.allclose(b[:, [2, 4]], a[:, [2, 4]] / 4)
    with pytest.raises(ValueError):
        MultiScaleFourier(1, decay=-1.0)
    with pytest.raises(ValueError):
        MultiScaleFourier(1, (1, 0))


def test_unit_amplitudes_skip_the_product_bit_for_bit():
    """Without decay the features skip the product by ones: the same bits, forward and backward,
    as the general path; a state with other amplitudes loaded takes the general path again."""
    torch.manual_seed(0)
    features = MultiScaleFourier(3, scale=0.8)
    general = MultiScaleFourier(3, scale=0.8)
    general._unit_amplitudes = False  # the product by the (unit) amplitudes
    z1 = torch.randn(5, 3, requires_grad=True)
    z2 = z1.detach().clone().requires_grad_(True)
    out1, out2 = features(z1), general(z2)
    assert torch.equal(out1, out2)
    grad = torch.randn_like(out1)
    out1.backward(grad)
    out2.backward(grad)
    assert torch.equal(z1.grad, z2.grad)
    decayed = MultiScaleFourier(3, scale=0.8, decay=1.0)
    features.load_state_dict(decayed.state_dict())
    assert not features._unit_amplitudes
    assert torch.equal(features(z1), decayed(z1))
