"""Ray: RayPool (order, an actor killed mid-request, training identical to the local device) and `bench --ray`, on one local Ray of 2 CPUs."""

import os
import threading
from pathlib import Path

import pytest
import torch

import blackgrad
from blackgrad.errors import PoolError
from blackgrad.pool import RayPool

from pool_devices import Elementwise
from test_pool import _train, batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds); at most 2 CPUs, no dashboard."""
    # the actors import this directory's devices and this checkout's blackgrad, as the tests do
    paths = [str(Path(__file__).parent), str(Path(blackgrad.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
    yield
    ray.shutdown()


@pytest.mark.parametrize("transport", ["zmq", "ray"])
def test_ray_pool_evaluates_in_order_and_trains_as_the_local_device(local_ray, transport):
    with RayPool(Elementwise, workers=2, actor_options={"num_cpus": 0.5}, transport=transport) as pool:
        assert pool.transport == transport
        x, theta = batch(7), torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
        assert torch.equal(pool(x, theta), Elementwise()(x, theta))
        assert [w.samples for w in pool.status().workers] == [3, 4]
        losses, params, calls = _train(Elementwise())
        pool_losses, pool_params, pool_calls = _train(pool)
        assert pool_losses == losses and all(torch.equal(a, b) for a, b in zip(pool_params, params))
        assert pool_calls["total"] == calls["total"] == pool.status().samples - 7
        assert sum(pool.worker_attribute("evaluated")) == pool.status().samples


@pytest.mark.parametrize("transport", ["zmq", "ray"])
def test_an_actor_killed_mid_request_has_its_share_retried(local_ray, transport):
    # 0.1 s per sample: each actor spends 0.4 s on its share of 8, time enough to kill one
    slow = lambda: Elementwise(sleep_per_sample=0.1)  # noqa: E731
    with RayPool(slow, workers=2, actor_options={"num_cpus": 0.5}, transport=transport) as pool:
        x = batch(8)
        victim = pool.actors[0]
        killer = threading.Timer(0.15, ray.kill, args=(victim,))
        killer.start()
        try:
            y = pool(x)
        finally:
            killer.join()
        assert torch.equal(y, Elementwise()(x))
        status = pool.status()
        dead, alive = status.workers
        assert (dead.failures, dead.failed_samples, dead.samples, dead.alive) == (1, 4, 0, False)
        assert dead.last_error.startswith("died (ActorDiedError")
        assert (alive.samples, alive.failures) == (8, 0) and status.samples == 8
        assert pool.worker_attribute("evaluated") == [None, 8]  # the survivor's own count: its share and the retried one
        # the next request starts a new actor in place of the dead one
        assert torch.equal(pool(x), Elementwise()(x))
        status = pool.status()
        assert status.workers[0].restarts == 1 and status.workers[0].alive and status.samples == 16
        assert pool.worker_attribute("evaluated") == [4, 12]
        # with a timeout shorter than a share (0.4 s), both actors are killed and the request fails, naming them
        pool.timeout = 0.2
        with pytest.raises(PoolError, match=r"ray actor 0: killed \(no answer within the timeout of 0.2 s\); ray actor 1: killed"):
            pool(x)
        assert [w.alive for w in pool.status().workers] == [False, False]


def test_actors_that_cannot_start_are_a_clear_error(local_ray):
    with pytest.raises(PoolError, match=r"ray actor 0 did not start within 1 s.*actor_options=\{'num_cpus': 0.25\}"):
        RayPool(Elementwise, workers=1, actor_options={"num_cpus": 16}, start_timeout=1)

    def broken_factory():
        raise OSError("no camera on /dev/video0")

    with pytest.raises(PoolError, match="ray actor 0 did not start .its device's factory failed.*no camera on /dev/video0"):
        RayPool(broken_factory, workers=1, actor_options={"num_cpus": 0.5})


def test_the_default_transport_is_zmq_on_loopback_for_a_local_ray(local_ray):
    with RayPool(Elementwise, workers=2, actor_options={"num_cpus": 0.5}) as pool:
        assert pool.transport == "zmq"
        assert all(w.address.startswith("tcp://127.0.0.1:") for w in pool._workers)
    with pytest.raises(ValueError, match="transport must be 'auto', 'zmq' or 'ray'"):
        RayPool(Elementwise, workers=1, transport="grpc")


def test_a_message_without_the_pools_key_is_refused_unread(local_ray):
    import hashlib
    import hmac
    import pickle

    import zmq

    from blackgrad.pool import _EVALUATE, _SEQ, _dumps, _pack, _sign

    with RayPool(Elementwise, workers=1, actor_options={"num_cpus": 0.5}) as pool:
        worker = pool._workers[0]
        x = batch(4)
        body = _dumps((_pack(x),))
        head = _EVALUATE + _SEQ.pack(1)
        stranger = worker.channel.context.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(worker.address)
        try:
            wrong = hmac.new(b"a guess" * 5, head + body, hashlib.sha256).digest()
            tampered = (body[:-1] + b"\x00", _sign(worker.channel.key, head, body))  # a body its MAC is not for
            for message in ([head, wrong, body], [head, tampered[1], tampered[0]], [head, body], [b"junk"]):
                stranger.send_multipart(message)
            assert stranger.poll(500) == 0  # no answer to any of them
        finally:
            stranger.close()
        assert pool.worker_attribute("evaluated") == [0] and pool.worker_attribute("calls") == [0]
        assert torch.equal(pool(x), Elementwise()(x))  # the pool itself is still served
        assert pool.worker_attribute("evaluated") == [4] and pool.status().samples == 4
        assert pickle.loads(body)[0].array.shape == (4, 4)


def test_a_signed_message_sent_again_is_not_evaluated_again(local_ray):
    import zmq

    from blackgrad.pool import _EVALUATE, _SEQ, _dumps, _pack, _sign

    with RayPool(Elementwise, workers=1, actor_options={"num_cpus": 0.5}) as pool:
        worker = pool._workers[0]
        x = batch(4)
        assert torch.equal(pool(x), Elementwise()(x))
        assert pool.worker_attribute("evaluated") == [4]
        # the request the pool just sent, as someone who captured it on the network would send it again
        body = _dumps((_pack(x),))
        for number in (worker.seq - 1, 1):  # the evaluation's own number, and the ping's before it
            head = _EVALUATE + _SEQ.pack(number)
            replayer = worker.channel.context.socket(zmq.DEALER)
            replayer.setsockopt(zmq.LINGER, 0)
            replayer.connect(worker.address)
            try:
                replayer.send_multipart([head, _sign(worker.channel.key, head, body), body])
                assert replayer.poll(500) == 0  # no answer
            finally:
                replayer.close()
        assert pool.worker_attribute("evaluated") == [4]  # not evaluated again
        assert torch.equal(pool(x), Elementwise()(x)) and pool.worker_attribute("evaluated") == [8]


def test_an_actor_that_died_between_requests_is_noticed_and_its_share_retried(local_ray):
    with RayPool(Elementwise, workers=2, actor_options={"num_cpus": 0.5}) as pool:
        x = batch(6)
        assert torch.equal(pool(x), Elementwise()(x))
        ray.kill(pool.actors[1])
        ready, _ = ray.wait([pool._workers[1].serve_ref], timeout=30)  # ray.kill returns before the actor is gone
        assert ready
        assert torch.equal(pool(x), Elementwise()(x))  # its share was sent into a channel nobody reads
        first, second = pool.status().workers
        assert (second.failures, second.failed_samples, second.samples, second.alive) == (1, 3, 3, False)
        assert second.last_error.startswith("died (ActorDiedError")
        assert (first.samples, first.failures) == (3 + 6, 0) and pool.status().samples == 12
        assert torch.equal(pool(x), Elementwise()(x))
        assert pool.status().workers[1].restarts == 1 and pool.worker_attribute("evaluated") == [3 + 6 + 3, 3]


def test_a_dropped_share_leaves_no_answer_behind_for_the_next(local_ray):
    # an interrupted request leaves a share out: its late answer must not be taken for the next share's
    slow = lambda: Elementwise(sleep_per_sample=0.05)  # noqa: E731
    with RayPool(slow, workers=1, actor_options={"num_cpus": 0.5}) as pool:
        worker = pool._workers[0]
        x = batch(4)
        share = worker.submit((x,))
        assert worker.drop(share) is False
        other = 2 * batch(4)  # other rows: a stale answer would show
        assert torch.equal(pool(other), Elementwise()(other))
        assert pool.worker_attribute("evaluated") == [8] and pool.status().samples == 4


def test_device_errors_over_the_channel_name_each_actor(local_ray):
    from pool_devices import AlwaysRaises, RaisesOnCall

    with RayPool(lambda: RaisesOnCall(fail_on=1), workers=2, actor_options={"num_cpus": 0.5}) as pool:
        x = batch(6)
        with pytest.raises(PoolError) as caught:
            pool(x)
        for i in (0, 1):
            assert f"ray actor {i}: RuntimeError: glitch on call 1" in str(caught.value)
        assert torch.equal(pool(x), Elementwise()(x))  # the devices raised: the actors live on
        assert [w.alive for w in pool.status().workers] == [True, True] and pool.status().samples == 6
    with RayPool(AlwaysRaises, workers=1, actor_options={"num_cpus": 0.5}) as pool:
        with pytest.raises(PoolError, match="detector saturated"):
            pool(batch(2))


def test_a_ray_pool_left_open_does_not_hang_the_exit():
    import subprocess
    import sys

    script = (
        "import ray, torch\n"
        "from blackgrad.pool import RayPool\n"
        "from pool_devices import Elementwise\n"
        "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)\n"
        "pool = RayPool(Elementwise, workers=2, actor_options={'num_cpus': 0.5})\n"
        "assert pool.transport == 'zmq' and pool(torch.ones(4, 4)).shape == (4, 4)\n"
        "print('ok', flush=True)\n"  # and exits without closing the pool
    )
    paths = [str(Path(__file__).parent), str(Path(blackgrad.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-2000:]


def test_bench_runs_as_ray_tasks_give_the_records_of_serial_ones(local_ray, tmp_path):
    from blackgrad.bench import run_benchmark

    def records(**where):
        summary = run_benchmark(
            tmp_path / str(where), quick=True, task_names=["moons-shg"], method_names=["exact"], seeds=(0,),
            progress=False, **where,
        )
        return {(r["method"], r["seed"]): (r["accuracy"], r["evaluations"], r["curve"]) for r in summary["records"]}

    serial = records(jobs=1)
    assert records(ray="local") == serial and len(serial) == 1  # the module's Ray is up: the runs go to it
    assert "runs as Ray tasks (local)" in (tmp_path / "{'ray': 'local'}" / "results.md").read_text()



def test_a_share_travels_to_an_actor_as_one_pickle_even_with_a_lambda_among_its_arguments():
    # plain pickle for tensors and arrays; what it cannot take goes through cloudpickle, as Ray's own would
    import pickle

    from blackgrad.pool import _dumps, _pack, _unpack

    x = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    back = pickle.loads(_dumps((_pack(x), 0.5)))
    assert torch.equal(_unpack(back[0]), x) and back[0].array.dtype == x.numpy().dtype and back[1] == 0.5
    x_back, scale = pickle.loads(_dumps((_pack(x), lambda v: 2 * v)))
    assert torch.equal(_unpack(x_back), x) and scale(3) == 6
