"""Device pools (threads and processes): order, faults, the ledger, and training identical to the local device."""

import functools
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import blackgrad as bg
from blackgrad.errors import DeviceError, PoolError
from blackgrad.estimators import SPSA
from blackgrad.pool import DevicePool

from pool_devices import (
    AlwaysRaises,
    DiesOnCall,
    Elementwise,
    HangsOnCall,
    RaisesOnCall,
    RaisesUnpicklable,
    Slow,
    WrongRows,
    make_broken,
    make_elementwise,
    make_exits_while_starting,
    make_slow_to_start,
)


def batch(rows=10, n=4, dtype=torch.float64):
    return torch.randn(rows, n, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("rows", [1, 3, 10])
def test_threads_split_in_order_and_count(rows):
    devices = [Elementwise() for _ in range(3)]
    pool = DevicePool(devices)
    x, theta = batch(rows), torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    assert torch.equal(pool(x, theta), Elementwise()(x, theta))
    status = pool.status()
    assert status.samples == rows and status.requests == 1 and status.failures == 0
    # as even as possible, in order; a batch smaller than the pool uses fewer workers
    expected = {1: [1, 0, 0], 3: [1, 1, 1], 10: [3, 3, 4]}[rows]
    assert [w.samples for w in status.workers] == expected
    assert [d.evaluated for d in devices] == expected
    assert [w.calls for w in status.workers] == [int(e > 0) for e in expected]


def test_threads_numpy_arrays_and_an_empty_batch():
    pool = DevicePool(factory=make_elementwise, workers=2)
    x = batch(5).numpy()
    y = pool(x)
    assert isinstance(y, np.ndarray) and np.array_equal(y, Elementwise()(x))
    assert pool(x[:0]).shape == (0, 4)


def test_a_worker_that_raises_has_its_share_retried_elsewhere():
    devices = [Elementwise(), RaisesOnCall(fail_on=1), Elementwise()]
    layer = bg.BlackBox(DevicePool(devices), SPSA(directions=1), calibrate=False)
    x = batch(12)
    assert torch.equal(layer(x), Elementwise()(x))
    status = layer.fun.status()
    glitch = status.workers[1]
    assert (glitch.failures, glitch.failed_samples, glitch.samples) == (1, 4, 0)
    assert glitch.last_error == "RuntimeError: glitch on call 1"
    # nothing lost, nothing twice: the devices' own counts, the pool's and the BlackBox ledger agree
    assert sum(d.evaluated for d in devices) == status.samples == layer.calls.forward == 12
    assert layer.calls.failed == 0  # the pool absorbed the fault: the request as a whole succeeded
    # the glitch is over: at the next request worker 1 takes its share again
    layer(x)
    assert layer.fun.status().workers[1].samples == 4


def test_every_worker_failing_names_each_of_them():
    pool = DevicePool([AlwaysRaises(), WrongRows()], name="bench pool")
    with pytest.raises(PoolError, match=r"bench pool: every worker failed on this request, so \d+ of 6 samples") as info:
        pool(batch(6))
    message = str(info.value)
    assert "thread 0: RuntimeError: detector saturated" in message
    assert "thread 1: ValueError: returned 2 rows for a share of 3 samples" in message
    # through a BlackBox: a device error, the whole request counted as failed, nothing returned
    layer = bg.BlackBox(DevicePool([AlwaysRaises(), AlwaysRaises()]), SPSA(), calibrate=False)
    with pytest.raises(DeviceError, match="thread 1: RuntimeError: detector saturated"):
        layer(batch(4))
    assert layer.calls.failed == 4 and layer.calls.forward == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode must be 'threads' or 'processes'"):
        DevicePool([Elementwise()], mode="ray")
    with pytest.raises(TypeError, match="either devices=.* or factory=.*not both"):
        DevicePool([Elementwise()], factory=make_elementwise, workers=2)
    with pytest.raises(ValueError, match="needs workers, a positive int"):
        DevicePool(factory=make_elementwise)
    with pytest.raises(TypeError, match="devices must be a list of devices"):
        DevicePool(Elementwise())
    with pytest.raises(TypeError, match=r"devices\[1\] is not callable"):
        DevicePool([Elementwise(), 3])
    with pytest.raises(TypeError, match="cannot be sent to a worker process.*factory= a module-level function"):
        DevicePool([lambda x: x], mode="processes")
    pool = DevicePool([Elementwise()])
    pool.close()
    with pytest.raises(PoolError, match="is closed"):
        pool(batch(2))


def test_exact_gradients_pass_through_a_thread_pool():
    device = bg.devices.Linear(4, 3, seed=0)
    layer = bg.BlackBox(DevicePool([device, device]), bg.estimators.Exact(), params=device.default_params(torch.float64))
    x = batch(5).requires_grad_()
    layer(x).sum().backward()
    exact_x, exact_theta = device.exact_vjp(x.detach(), layer.params.detach(), torch.ones(5, 3, dtype=torch.float64))
    assert torch.allclose(x.grad, exact_x) and torch.allclose(layer.params.grad, exact_theta)


def test_processes_survive_a_worker_that_dies_mid_request():
    # worker 0's process exits on its second call (the second request); worker 1 takes over its share
    with DevicePool([DiesOnCall(die_on=2), Elementwise()], mode="processes") as pool:
        x = batch(8)
        assert torch.equal(pool(x), Elementwise()(x))
        assert torch.equal(pool(x), Elementwise()(x))
        status = pool.status()
        dead = status.workers[0]
        assert (dead.failures, dead.failed_samples, dead.samples, dead.alive) == (1, 4, 4, False)
        assert re.fullmatch(r"died \(ProcessDied: its process \(pid \d+\) exited with code 3\)", dead.last_error)
        assert "process 0: 4 samples in 2 calls, 1 failed (4 samples)" in str(status) and "DEAD" in str(status)
        assert status.workers[1].samples == 12 and status.samples == 16
        # the next request starts worker 0 afresh (a new device: its counter starts at zero); tensors keep their dtype
        single = x.float()
        y = pool(single)
        assert torch.equal(y, Elementwise()(single)) and y.dtype == torch.float32
        status = pool.status()
        assert status.workers[0].restarts == 1 and status.workers[0].alive
        assert pool.worker_attribute("evaluated") == [4, 16]
        assert status.samples == 24


def _train(device, seed=0, steps=4, numpy=False):
    torch.manual_seed(seed)
    layer = bg.BlackBox(device, SPSA(directions=2, seed=seed), params=torch.zeros(4, dtype=torch.float64), numpy=numpy)
    model = nn.Sequential(nn.Linear(3, 4).double(), layer, nn.Linear(4, 1).double())
    x = torch.randn(16, 3, dtype=torch.float64)
    target = x[:, :1] * x[:, 1:2]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()], layer.calls.as_dict()


@pytest.mark.parametrize("numpy", [False, True])
def test_training_through_pools_is_identical_to_the_local_device(numpy):
    losses, params, calls = _train(Elementwise(), numpy=numpy)
    assert losses[-1] < losses[0]  # it trains at all
    with DevicePool(factory=functools.partial(Elementwise, 4), workers=2, mode="processes") as processes:
        runs = [_train(DevicePool([Elementwise() for _ in range(3)]), numpy=numpy), _train(processes, numpy=numpy)]
        for pool_losses, pool_params, pool_calls in runs:
            assert pool_losses == losses
            assert all(torch.equal(a, b) for a, b in zip(pool_params, params))
            assert {k: v for k, v in pool_calls.items() if k != "seconds"} == {k: v for k, v in calls.items() if k != "seconds"}
        assert processes.status().samples == calls["total"]


def test_processes_every_worker_dying_or_raising_is_a_clear_error():
    with DevicePool([DiesOnCall(die_on=1), AlwaysRaises()], mode="processes") as pool:
        with pytest.raises(PoolError, match="every worker failed") as info:
            pool(batch(4))
        message = str(info.value)
        assert re.search(r"process 0: died \(ProcessDied: its process \(pid \d+\) exited with code 3\)", message)
        assert "process 1: RuntimeError: detector saturated" in message  # the device's own error, across the process
        assert [w.alive for w in pool.status().workers] == [False, True]
    with pytest.raises(PoolError, match="process 0 did not start: OSError: no camera on /dev/video0"):
        DevicePool(factory=make_broken, workers=1, mode="processes")


def test_a_share_past_the_timeout_is_evaluated_elsewhere():
    # threads: the stuck one cannot be stopped; it sits out until its call returns, and its late answer is dropped
    stuck = HangsOnCall(hang_on=1, seconds=1.0)
    pool = DevicePool([Elementwise(), stuck], timeout=0.2)
    x = batch(6)
    start = time.perf_counter()
    assert torch.equal(pool(x), Elementwise()(x))
    assert time.perf_counter() - start < 0.9  # not waiting for the stuck call
    worker = pool.status().workers[1]
    assert (worker.failures, worker.failed_samples, worker.samples, worker.alive) == (1, 3, 0, True)
    assert worker.last_error == "no answer within the timeout of 0.2 s"
    assert torch.equal(pool(x), Elementwise()(x))  # while it is still stuck: worker 0 alone
    assert pool.status().workers[0].samples == 12 and pool.status().workers[1].calls == 1
    deadline = time.monotonic() + 10
    while not pool._workers[1].ready() and time.monotonic() < deadline:  # until its call has returned (dropped)
        time.sleep(0.05)
    assert torch.equal(pool(x), Elementwise()(x))
    assert pool.status().workers[1].samples == 3 and stuck.evaluated == 3 + 3  # its own count has the dropped share
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds or None"):
        DevicePool([Elementwise()], timeout=0)


def test_a_process_past_the_timeout_is_killed_and_replaced():
    with DevicePool([Elementwise(), HangsOnCall(hang_on=2)], mode="processes", timeout=1.0) as pool:
        x = batch(6)
        pool(x)
        assert torch.equal(pool(x), Elementwise()(x))  # worker 1 hangs on its second call
        worker = pool.status().workers[1]
        assert (worker.failures, worker.failed_samples, worker.alive) == (1, 3, False)
        assert worker.last_error == "killed (no answer within the timeout of 1 s)"
        assert torch.equal(pool(x), Elementwise()(x))  # a new process in its place
        assert pool.status().workers[1].restarts == 1 and pool.worker_attribute("evaluated") == [12, 3]


def test_a_process_killed_mid_share_has_its_share_retried_and_is_restarted():
    # 0.1 s per sample: a share of 4 takes 0.4 s, time enough to kill worker 0's process from outside
    with DevicePool([Slow(), Slow()], mode="processes") as pool:
        x = batch(8)
        victim = pool.worker_attribute("pid")[0]
        killer = threading.Timer(0.15, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        try:
            y = pool(x)
        finally:
            killer.join()
        assert torch.equal(y, Elementwise()(x))
        dead, alive = pool.status().workers
        assert (dead.failures, dead.failed_samples, dead.samples, dead.calls, dead.alive) == (1, 4, 0, 1, False)
        assert dead.last_error == f"died (ProcessDied: its process (pid {victim}) was killed by SIGKILL)"
        assert (alive.samples, alive.failures, alive.calls) == (8, 0, 2) and pool.status().samples == 8
        assert pool.worker_attribute("evaluated") == [None, 8]  # the survivor's own count: its share and the retried one
        # the next request starts worker 0 afresh, in a new process
        assert torch.equal(pool(x), Elementwise()(x))
        status = pool.status()
        assert status.workers[0].restarts == 1 and status.workers[0].alive and status.samples == 16
        assert pool.worker_attribute("evaluated") == [4, 12] and pool.worker_attribute("pid")[0] != victim


def test_a_process_that_died_between_requests_is_noticed_when_its_share_is_sent():
    with DevicePool(factory=make_elementwise, workers=2, mode="processes") as pool:
        x = batch(6)
        assert torch.equal(pool(x), Elementwise()(x))
        victim = pool.worker_attribute("pid")[0]
        os.kill(victim, signal.SIGKILL)
        pool._workers[0].process.join(timeout=10)  # it has ended before the next request
        assert torch.equal(pool(x), Elementwise()(x))  # its share is refused by its closed pipe, and goes to worker 1
        dead = pool.status().workers[0]
        assert (dead.failures, dead.failed_samples, dead.samples, dead.alive) == (1, 3, 3, False)
        assert dead.last_error == f"died (ProcessDied: its process (pid {victim}) was killed by SIGKILL)"
        assert pool.status().workers[1].samples == 9 and pool.status().samples == 12
        assert torch.equal(pool(x), Elementwise()(x)) and pool.status().workers[0].restarts == 1


def test_a_device_error_that_cannot_be_pickled_comes_back_as_text():
    with DevicePool([RaisesUnpicklable(), Elementwise()], mode="processes") as pool:
        x = batch(4)
        assert torch.equal(pool(x), Elementwise()(x))
        assert pool.status().workers[0].last_error == "RuntimeError: Unpicklable: driver state lost"
        assert pool.status().workers[0].alive  # the device raised; its process lives on


def _pool_children():
    return [p for p in multiprocessing.active_children() if p.name.startswith("blackgrad-pool")]


def test_processes_that_cannot_start_are_a_clear_error_and_are_ended():
    with pytest.raises(PoolError, match=r"process 0 did not start: ProcessDied: its process \(pid \d+\) exited with code 5"):
        DevicePool(factory=make_exits_while_starting, workers=2, mode="processes")
    start = time.perf_counter()
    with pytest.raises(PoolError, match="process 0 did not start: TimeoutError: no answer within the start timeout of 1 s"):
        DevicePool(factory=make_slow_to_start, workers=2, mode="processes", start_timeout=1)
    assert time.perf_counter() - start < 10  # both killed at once, not waited for
    assert _pool_children() == []


def test_close_ends_the_processes_and_a_pool_left_open_does_not_hang_the_exit(tmp_path):
    pool = DevicePool(factory=make_elementwise, workers=2, mode="processes")
    processes = [w.process for w in pool._workers]
    assert all(p.is_alive() for p in processes)
    pool.close()
    assert not any(p.is_alive() for p in processes) and _pool_children() == []
    script = (
        "import sys, torch\n"
        "from blackgrad.pool import DevicePool\n"
        "from pool_devices import make_elementwise\n"
        "pool = DevicePool(factory=make_elementwise, workers=2, mode='processes')\n"
        "print(*pool.worker_attribute('pid'), flush=True)\n"
        "assert pool(torch.ones(4, 4)).shape == (4, 4)\n"  # and exits without closing the pool
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.path.dirname(os.path.dirname(bg.__file__))]))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_an_interrupted_request_leaves_no_answer_behind_for_the_next(mode):
    # Ctrl-C while worker 0 is 0.4 s into its share: its late answer must not be taken for its next share's
    with DevicePool([Slow(), Elementwise()], mode=mode) as pool:
        x = batch(8)
        interrupt = threading.Timer(0.15, os.kill, args=(os.getpid(), signal.SIGINT))
        interrupt.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                pool(x)
        finally:
            interrupt.join()
        other = 2 * batch(8)  # other rows: a stale answer would show
        assert torch.equal(pool(other), Elementwise()(other))
        first, second = pool.status().workers
        if mode == "processes":  # killed, and started afresh for the second request
            assert first.restarts == 1 and first.alive and first.samples == 4 and second.samples == 8
        else:  # the thread cannot be stopped: it sat the second request out
            assert first.calls == 1 and first.samples == 0 and second.samples == 4 + 8
