"""Dtype rules shared by devices and estimators."""

from __future__ import annotations

import torch


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching the real dtype ``dtype``: complex128 for float64, else complex64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64
