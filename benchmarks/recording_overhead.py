"""What recording every device evaluation costs: time per device call with and without ``record=``.

A ``BlackBox`` with no estimator work (``torch.no_grad``, ``calibrate=False``)
calls a device on a batch of ``--batch`` samples of ``--width`` inputs, again
and again; the same run with ``record=`` a fresh HDF5 file adds the write and
flush of each call.  Two devices: ``torch.sin`` (microseconds: the overhead
alone shows) and one that sleeps 1 ms (a fast instrument).  Each row is the
median over ``--calls`` calls, measured side by side in one run; the last
column is the ratio.

    python benchmarks/recording_overhead.py [--batch 64] [--width 16] [--calls 300]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import blackgrad as bg
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import blackgrad as bg


def per_call(device, x: torch.Tensor, calls: int, record: Path | None) -> float:
    """Median seconds of one forward call through a BlackBox (recording into ``record`` if given)."""
    box = bg.BlackBox(device, record=record, calibrate=False)
    times = []
    with torch.no_grad():
        box(x)  # the first call builds the prober (and the recording's box entry)
        for _ in range(calls):
            start = time.perf_counter()
            box(x)
            times.append(time.perf_counter() - start)
    if box.recorder is not None:
        box.recorder.close()
    return statistics.median(times)


def slow(x: torch.Tensor) -> torch.Tensor:
    time.sleep(0.001)
    return torch.sin(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.rand(args.batch, args.width)
    print(f"torch {torch.__version__}, {platform.machine()}, 1 thread, batch {args.batch} × {args.width}, median of {args.calls} calls")
    print()
    print("| device | without recording, ms/call | with record=, ms/call | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, device in (("torch.sin", torch.sin), ("sleeps 1 ms", slow)):
            plain = per_call(device, x, args.calls, None)
            recorded = per_call(device, x, args.calls, Path(folder) / f"{name.replace(' ', '-')}.h5")
            print(f"| {name} | {plain * 1e3:.3f} | {recorded * 1e3:.3f} | {recorded / plain:.2f} |")


if __name__ == "__main__":
    main()
