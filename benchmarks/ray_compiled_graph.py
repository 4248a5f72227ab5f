"""Would Ray's compiled graphs make a request to 8 actors cheap enough for RayPool? Plain actor calls against a compiled graph.

The device of ``pool_speedup.py`` (2.5 ms per sample, one sample at a time,
in ``time.sleep``), a batch of 64, on a local Ray of 2 CPUs: one actor and
eight actors called with ordinary actor calls (one equal share each, one
``ray.get``), against eight actors in a compiled graph (``ray.dag``: an
``InputNode`` with one argument per actor, a ``MultiOutputNode``,
``experimental_compile()``; shares and results go through Ray's
shared-memory channels).  The kinds take turns batch by batch, after
``--gap`` seconds of idleness each round (the other rows of the pool
benchmark, or a trainer's compute, leave the actors idle between requests).
Printed: the time per batch, the speedup over one plain actor, what the
compiled graph's actors cost in CPU while they wait for a request, and any
execution that did not come back within ``--get-timeout`` seconds (after
one, the graph is not used again in the run).  ``--single-graph`` also
compiles a graph of one actor and times it in the same turns, as a pool of
one worker would have.

    python benchmarks/ray_compiled_graph.py [--repeats 20] [--gap 0.4] [--single-graph]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

PER_SAMPLE = 0.0025


class SampleBySample:
    """The device of pool_speedup.py: ``PER_SAMPLE`` seconds per sample, one at a time.

    A copy, not an import: Ray ships a class defined in the script by value,
    while one imported from ``pool_speedup`` would have to be importable in
    every actor's process, where ``benchmarks/`` is not on the path.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in x:
            time.sleep(PER_SAMPLE)
            rows.append(torch.sin(row) * torch.cos(2 * row))
        return torch.stack(rows)


class DeviceActor:
    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.device = SampleBySample()

    def ping(self) -> int:
        return os.getpid()

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.device(torch.from_numpy(x.copy())).numpy()


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.4, help="seconds of idleness before each round")
    parser.add_argument("--get-timeout", type=float, default=10.0)
    parser.add_argument("--single-graph", action="store_true", help="also time a compiled graph of one actor")
    args = parser.parse_args()
    import ray
    from ray.dag import InputNode, MultiOutputNode

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"{os.cpu_count()} cores, Ray {ray.__version__}, torch {torch.__version__}; batch 64 x 16; "
          f"{args.repeats} rounds, {args.gap:g} s idle before each; load average {os.getloadavg()[0]:.2f} at start")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    reference = SampleBySample()(x).numpy()
    actor = ray.remote(DeviceActor).options(num_cpus=0.05)
    plain = {k: [actor.remote() for _ in range(k)] for k in (1, 8)}
    ray.get([a.ping.remote() for actors in plain.values() for a in actors])

    def plain_call(actors):
        def call(x):
            shares = torch.tensor_split(x, len(actors))
            return np.concatenate(ray.get([a.run.remote(s.numpy()) for a, s in zip(actors, shares)]))
        return call

    calls = {"plain actors, 1": plain_call(plain[1]), "plain actors, 8": plain_call(plain[8])}
    graphs, graph_pids = {}, {}
    for k in (8, 1) if args.single_graph else (8,):
        actors = [actor.remote() for _ in range(k)]
        graph_pids[k] = ray.get([a.ping.remote() for a in actors])
        with InputNode() as inp:
            dag = MultiOutputNode([a.run.bind(inp[i]) for i, a in enumerate(actors)])
        start = time.perf_counter()
        graphs[k] = dag.experimental_compile()
        print(f"compiled graph of {k}: compiled in {time.perf_counter() - start:.2f} s")

        def graph_call(x, graph=graphs[k], k=k):
            refs = graph.execute(*[s.numpy() for s in torch.tensor_split(x, k)])
            return np.concatenate(ray.get(refs, timeout=args.get_timeout))

        calls[f"compiled graph, {k}"] = graph_call
    for call in calls.values():
        assert np.array_equal(call(x), reference)  # and warms it up
    for k, pids in graph_pids.items():
        before = cpu_seconds(pids)
        time.sleep(2.0)
        print(f"compiled graph of {k}: its actors used {(cpu_seconds(pids) - before) / 2.0 * 100:.0f}% of one core "
              "over 2 s with no request")
    times = {kind: [] for kind in calls}
    hung = set()
    for round_ in range(args.repeats):
        time.sleep(args.gap)
        for kind, call in calls.items():
            if kind in hung:
                continue
            start = time.perf_counter()
            try:
                y = call(x)
            except (ray.exceptions.RayChannelTimeoutError, ray.exceptions.GetTimeoutError) as err:
                hung.add(kind)
                print(f"{kind}: round {round_}: no result after {time.perf_counter() - start:.1f} s "
                      f"({type(err).__name__}); not used again")
                continue
            times[kind].append(time.perf_counter() - start)
            assert np.array_equal(y, reference)
    print("\n| request to | actors | batches | fastest ms | median ms | speedup over 1 plain actor (fastest) | (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = times["plain actors, 1"]
    for kind, ts in times.items():
        if ts:
            what, k = kind.rsplit(", ", 1)
            print(f"| {what} | {k} | {len(ts)} | {min(ts) * 1e3:.1f} | {statistics.median(ts) * 1e3:.1f} "
                  f"| {min(base) / min(ts):.2f}x | {statistics.median(base) / statistics.median(ts):.2f}x |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    for graph in graphs.values():
        try:
            graph.teardown()
        except Exception as err:  # a hung graph may not tear down cleanly
            print(f"teardown: {type(err).__name__}")
    ray.shutdown()


if __name__ == "__main__":
    main()
