"""The one rule for a seed, shared by estimators and devices."""

from __future__ import annotations

import operator
from typing import Any

import torch


def make_generator(seed: Any) -> torch.Generator:
    """A CPU generator for ``seed``: an integer seeds it, None draws a fresh seed; anything else is refused.

    CPU, whatever device the data is on: random numbers are drawn there and
    moved, so a seed gives the same stream on CPU and CUDA.  A bool or a
    float is refused rather than rounded (``seed=0.5`` would silently be 0).
    """
    generator = torch.Generator()
    if seed is None:
        generator.seed()
        return generator
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    try:
        value = operator.index(seed)  # ints and numpy integers, not floats
    except TypeError:
        raise TypeError(f"seed must be an int or None, got {seed!r}") from None
    return generator.manual_seed(value)
