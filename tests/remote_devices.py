"""Device factories that tests/test_remote.py serves with ``blackgrad serve remote_devices:...``.

Not a test module: the served subprocesses import it (the tests put this
folder on their PYTHONPATH).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

#: a sample whose first input is one of these makes the test device misbehave on purpose
RAISE, SLOW, JUNK = -100.0, -200.0, -300.0
#: how long a SLOW call takes, seconds
SLOW_SECONDS = 0.6
N_IN, N_OUT = 4, 3


def weights(theta: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The device's (N_OUT, N_IN) matrix: θ when given, else a fixed one."""
    if theta is not None:
        return theta.reshape(N_OUT, N_IN).to(dtype)
    return torch.linspace(-1.0, 1.0, N_OUT * N_IN, dtype=dtype).reshape(N_OUT, N_IN)


def tanh_device(x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """The deterministic physics of the test device, also called locally as the reference."""
    return torch.tanh(x @ weights(theta, x.dtype).T)


def make_tanh(log: str | None = None, hold: str | None = None):
    """``tanh(x Wᵀ)`` (W from θ, or fixed), with the test hooks.

    * a first input equal to RAISE raises ValueError, JUNK returns a string,
      SLOW sleeps SLOW_SECONDS first;
    * ``log``: every successful call appends its batch size to this file
      (the device's own count, which survives a server restart);
    * ``hold``: while this file exists, a call writes ``hold + ".held"`` and
      sleeps (so that a test can kill the server in the middle of a request).
    """
    torch.set_num_threads(1)  # bitwise the same arithmetic as the single-threaded test process

    def device(x: torch.Tensor, theta: torch.Tensor | None = None):
        if hold is not None and os.path.exists(hold):
            Path(hold + ".held").write_text("held")
            time.sleep(30)
        first = float(x.reshape(x.shape[0], -1)[0, 0]) if x.shape[0] else 0.0
        if first == RAISE:
            raise ValueError("the lamp is off (test fault)")
        if first == JUNK:
            return "not an array"
        if first == SLOW:
            time.sleep(SLOW_SECONDS)
        y = tanh_device(x, theta)
        if log is not None:
            with open(log, "a") as f:
                f.write(f"{x.shape[0]}\n")
        return y

    return device


def make_ordered(seconds: float = 0.4):
    """Answers every sample with the index of its call, after ``seconds``; raises on overlapping calls."""
    state = {"calls": 0, "inside": False}

    def device(x: torch.Tensor) -> torch.Tensor:
        if state["inside"]:
            raise RuntimeError("two evaluations overlapped")
        state["inside"] = True
        try:
            time.sleep(seconds)
            state["calls"] += 1
            return torch.full((x.shape[0], 1), float(state["calls"]))
        finally:
            state["inside"] = False

    return device


def make_broken():
    raise RuntimeError("the camera is unplugged")
