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


def test_ray_pool_evaluates_in_order_and_trains_as_the_local_device(local_ray):
    with RayPool(Elementwise, workers=2, actor_options={"num_cpus": 0.5}) as pool:
        x, theta = batch(7), torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
        assert torch.equal(pool(x, theta), Elementwise()(x, theta))
        assert [w.samples for w in pool.status().workers] == [3, 4]
        losses, params, calls = _train(Elementwise())
        pool_losses, pool_params, pool_calls = _train(pool)
        assert pool_losses == losses and all(torch.equal(a, b) for a, b in zip(pool_params, params))
        assert pool_calls["total"] == calls["total"] == pool.status().samples - 7
        assert sum(pool.worker_attribute("evaluated")) == pool.status().samples


def test_an_actor_killed_mid_request_has_its_share_retried(local_ray):
    # 0.1 s per sample: each actor spends 0.4 s on its share of 8, time enough to kill one
    with RayPool(lambda: Elementwise(sleep_per_sample=0.1), workers=2, actor_options={"num_cpus": 0.5}) as pool:
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
