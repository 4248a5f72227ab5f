"""A progress bar the core draws only when asked to.

tqdm belongs to the ``bench`` extra, not to the core's dependencies: an
install without it trains as usual, and only ``progress=True`` needs it.
"""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], enabled: bool, desc: str) -> Iterable[T]:
    """``iterable`` itself, or (``enabled``) the same items under a tqdm bar that vanishes when done."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "progress=True draws its bar with tqdm, which is not installed: pip install tqdm "
            "(or pip install 'blackgrad[bench]'), or leave progress off",
            name="tqdm",
        ) from err
    return tqdm(iterable, leave=False, desc=desc)
