"""Learned estimators on wide devices: factored Jacobian heads, bounded replay buffers, raw inputs (issue 11, item 5)."""

import pytest
import torch

from blackgrad.estimators import LearnedJacobian
from blackgrad.estimators.learned import AUTO_FEATURES_LIMIT, BUFFER_BYTES, _ReplayBuffer, auto_embedding
from blackgrad.estimators.learned_jacobian import (
    NET_FACTORS_LIMIT,
    SCALED_FACTORS_RANK,
    _LowRankJacobian,
    _ScaledFactorsJacobian,
)
from blackgrad.nets import MultiScaleFourier


@pytest.mark.parametrize("head", [_LowRankJacobian, _ScaledFactorsJacobian], ids=["net-factors", "scaled-factors"])
def test_a_factored_head_applies_the_jacobian_it_stands_for_without_forming_it(head):
    torch.manual_seed(0)
    d, m = 7, 5
    model = head(d, m, 3, (8,)).double()
    alpha, direction, grad_out = torch.randn(4, d).double(), torch.randn(4, d).double(), torch.randn(4, m).double()
    jacobian = model(alpha)
    assert jacobian.shape == (4, m, d)
    torch.testing.assert_close(model.slope(alpha, direction), torch.einsum("bmd,bd->bm", jacobian, direction))
    torch.testing.assert_close(model.vjp(alpha, grad_out), torch.einsum("bm,bmd->bd", grad_out, jacobian))


def test_a_wide_device_gets_the_scaled_factors_head_and_its_estimate_is_the_heads_vjp():
    d = m = NET_FACTORS_LIMIT // 2 + 1
    estimator = LearnedJacobian(hidden=(8,), prior=None, embedding=None)
    estimator.prepare(d, m, torch.zeros(1))
    assert isinstance(estimator.model, _ScaledFactorsJacobian)
    assert estimator.model.rank == SCALED_FACTORS_RANK
    # memory grows like (m + d)·r: no parameter has m·d entries
    r = SCALED_FACTORS_RANK
    assert sum(p.numel() for p in estimator.model.parameters()) == (m + d) * r + (d * 8 + 8) + (8 * r + r)
    alpha, grad_out = torch.randn(2, d), torch.randn(2, m)
    with torch.no_grad():
        expected = torch.einsum("bm,bmd->bd", grad_out, estimator.model(alpha))
        torch.testing.assert_close(estimator.predict_vjp(alpha, grad_out), expected, rtol=1e-4, atol=1e-5)


def test_the_automatic_fourier_features_stop_at_wide_inputs():
    assert isinstance(auto_embedding(AUTO_FEATURES_LIMIT), MultiScaleFourier)
    assert auto_embedding(AUTO_FEATURES_LIMIT + 1) is None


def test_a_replay_buffer_holds_at_most_its_bytes_of_rows_and_reserve_can_grow_it():
    buffer = _ReplayBuffer(1000, max_bytes=10 * 8 * 4)  # ten rows of 8 float32s
    buffer.add(a=torch.ones(3, 5), b=torch.ones(3, 3))
    assert buffer.capacity == 10
    buffer.add(a=torch.arange(60.0).reshape(12, 5), b=torch.zeros(12, 3))
    assert len(buffer) == 10 and torch.equal(buffer.data["a"][:, 0].sort().values, torch.arange(10.0, 60.0, 5.0))
    buffer.reserve(20)  # asked for: past the limit, keeping every row
    assert buffer.capacity == 20 and len(buffer) == 10
    buffer.add(a=torch.ones(5, 5), b=torch.ones(5, 3))
    assert len(buffer) == 15


def test_a_replay_buffer_saves_the_rows_it_holds_and_resumes_with_the_same_draws():
    buffer = _ReplayBuffer(100)
    buffer.add(a=torch.arange(21.0).reshape(7, 3))
    state = buffer.state_dict()
    assert state["data"]["a"].shape == (7, 3)  # the rows held, not the 93 empty slots
    restored = _ReplayBuffer(5)
    restored.load_state_dict(state)
    assert restored.capacity == 100 and len(restored) == 7 and restored.position == 7
    for _ in range(3):  # the same draws from the same generator state, and the same rows added after
        draws = [b.sample(4, torch.Generator().manual_seed(3))["a"] for b in (buffer, restored)]
        assert torch.equal(draws[0], draws[1])
    for b in (buffer, restored):
        b.add(a=torch.full((95, 3), -1.0))  # wraps around: the newest 100 rows
        assert len(b) == 100 and b.position == 2
    assert torch.equal(buffer.data["a"], restored.data["a"])
    full = _ReplayBuffer(1)
    full.load_state_dict(buffer.state_dict())  # a full buffer saves every slot, in place
    assert torch.equal(full.data["a"], buffer.data["a"]) and full.position == 2


def test_a_narrow_device_keeps_the_whole_default_buffer():
    estimator = LearnedJacobian(hidden=(8,), prior=None)
    row = 4 * (64 + 64 + 10 + 10 + 1 + 1)  # α, direction, slope, grad_out, step, central
    assert estimator.buffer.capacity * row < BUFFER_BYTES
    estimator.buffer.add(alpha=torch.zeros(2, 64), direction=torch.zeros(2, 64), slope=torch.zeros(2, 10))
    assert estimator.buffer.capacity == 8192
