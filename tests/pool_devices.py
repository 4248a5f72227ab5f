"""Devices for the pool tests, in a module of their own so that worker processes can import them."""

from __future__ import annotations

import os
import time

import numpy as np
import torch


class Elementwise:
    """A deterministic device, row by row: ``tanh(x * w + θ)``; counts the samples it evaluated.

    Elementwise arithmetic gives every row the same bits whatever the batch it
    is in, so a batch split across workers equals the whole batch evaluated at once.
    """

    name = "elementwise"

    def __init__(self, n: int = 4, sleep_per_sample: float = 0.0) -> None:
        self.w = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
        self.sleep_per_sample = sleep_per_sample
        self.evaluated = 0
        self.calls = 0

    def __call__(self, x, theta=None):
        self.calls += 1
        if self.sleep_per_sample:
            time.sleep(self.sleep_per_sample * len(x))
        if isinstance(x, np.ndarray):
            y = np.tanh(x * self.w.numpy() + (0 if theta is None else theta))
        else:
            y = torch.tanh(x * self.w.to(x.dtype) + (0 if theta is None else theta))
        self.evaluated += len(x)
        return y

    @property
    def pid(self) -> int:
        """The process it runs in."""
        return os.getpid()


class RaisesOnCall(Elementwise):
    """Raises on its ``fail_on``-th call (1-based), before evaluating anything."""

    def __init__(self, fail_on: int = 1, **options) -> None:
        super().__init__(**options)
        self.fail_on = fail_on

    def __call__(self, x, theta=None):
        if self.calls + 1 == self.fail_on:
            self.calls += 1
            raise RuntimeError(f"glitch on call {self.calls}")
        return super().__call__(x, theta)


class AlwaysRaises(Elementwise):
    def __call__(self, x, theta=None):
        raise RuntimeError("detector saturated")


class WrongRows(Elementwise):
    """Returns one row too few."""

    def __call__(self, x, theta=None):
        return super().__call__(x, theta)[1:]


class DiesOnCall(Elementwise):
    """Ends its own process on its ``die_on``-th call, as a crashed simulator would."""

    def __init__(self, die_on: int = 1, **options) -> None:
        super().__init__(**options)
        self.die_on = die_on

    def __call__(self, x, theta=None):
        if self.calls + 1 == self.die_on:
            os._exit(3)
        return super().__call__(x, theta)


def make_elementwise() -> Elementwise:
    return Elementwise()


def make_dies_on_second_call() -> DiesOnCall:
    return DiesOnCall(die_on=2)


def make_broken() -> Elementwise:
    raise OSError("no camera on /dev/video0")


class HangsOnCall(Elementwise):
    """Stops answering for ``seconds`` on its ``hang_on``-th call, as a stuck driver does."""

    def __init__(self, hang_on: int = 1, seconds: float = 30.0, **options) -> None:
        super().__init__(**options)
        self.hang_on, self.seconds = hang_on, seconds

    def __call__(self, x, theta=None):
        if self.calls + 1 == self.hang_on:
            time.sleep(self.seconds)
        return super().__call__(x, theta)


class Slow(Elementwise):
    """Elementwise at 0.1 s per sample: time to kill its process mid-share."""

    def __init__(self, **options) -> None:
        super().__init__(sleep_per_sample=0.1, **options)


class Unpicklable(Exception):
    """An exception that cannot travel back from a worker process (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        import threading

        self.lock = threading.Lock()


class RaisesUnpicklable(Elementwise):
    def __call__(self, x, theta=None):
        raise Unpicklable("driver state lost")


def make_exits_while_starting() -> Elementwise:
    os._exit(5)


def make_slow_to_start() -> Elementwise:
    time.sleep(30)
    return Elementwise()
