"""The device contract shared by every simulated physical system.

A *device* is a plain Python object (deliberately not an ``nn.Module``: its
trainable parameters θ belong to the model that drives it, not to the device)
that maps a batch of inputs to a batch of measurements::

    y = device(x, theta)          # x (B, n), theta (p,) or None  ->  y (B, m)

* ``x`` is a real floating tensor of shape ``(B, n)``; ``theta`` a flat tensor
  of shape ``(p,)`` shared by the whole batch, or ``None`` for
  :meth:`Device.default_params`.  Devices with ``p == 0`` ignore ``theta``.
* ``y`` has shape ``(B, m)`` and x's dtype and torch device (CPU or CUDA);
  internal constants are built on x's device and cached per (dtype, device).
* The clean physics is differentiable torch code, so autograd gives its exact
  vector–Jacobian product.  :meth:`Device.reference` is that clean function
  and :meth:`Device.exact_vjp` differentiates it — both exist to *measure*
  gradient estimators, which must never call them.
* Randomness (hidden couplings, noise, faults, drift) comes from a
  ``torch.Generator`` the device owns, seeded by its ``seed`` argument, so a
  device re-created with the same seed behaves identically.
* What changes as a device runs (its noise generator, the drift so far, its
  counters) is its *state*: :meth:`Device.state_dict` returns it and
  :meth:`Device.load_state_dict` puts it back, so that a run resumed from a
  :class:`~blackgrad.Checkpoint` sees the same device as the run that saved
  it.  Any device of one's own may offer the same two methods (the
  checkpoint protocol); a physical instrument has no state to offer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .._dtypes import complex_dtype  # the estimators' rule too
from .._random import make_generator as _make_generator  # one rule for seeds, the estimators' too
from ..errors import InputShapeError

#: dtypes the physics is computed in; others (half, bfloat16) are computed in
#: float32 and cast back, because torch.fft and linear algebra want them.
WORKING_DTYPES = (torch.float32, torch.float64)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype a device computes in for inputs of ``dtype``."""
    return dtype if dtype in WORKING_DTYPES else torch.float32


def power_of(field: Tensor) -> Tensor:
    """``|field|²`` as a real tensor, differentiable everywhere (also at 0).

    Written as ``field · conj(field)`` because on the CPU it is several times
    faster than ``abs().square()`` or a sum over ``view_as_real``.
    """
    return (field * field.conj()).real


def bin_matrix(n_fine: int, n_coarse: int) -> Tensor:
    """``(n_fine, n_coarse)`` float64 0/1 matrix summing contiguous fine bins.

    Fine bin ``i`` goes to coarse bin ``floor(i * n_coarse / n_fine)``, so the
    coarse bins are contiguous and as equal in width as the sizes allow.
    """
    if n_coarse > n_fine:
        raise ValueError(f"cannot sum {n_fine} fine bins into {n_coarse} coarser bins")
    owner = torch.arange(n_fine) * n_coarse // n_fine
    return torch.nn.functional.one_hot(owner, n_coarse).to(torch.float64)


class Device:
    """Base class of all devices; the contract is the module docstring.

    Subclasses set ``in_features``, ``out_features``, ``n_params`` and ``name``
    and implement :meth:`_forward` (the measurement, as the hardware would
    produce it).  Devices whose measurement is not the clean differentiable
    physics (imperfection wrappers) also override :meth:`_reference`.
    """

    name: str = "device"
    in_features: int
    out_features: int
    n_params: int = 0

    # ------------------------------------------------------------ public API
    def __call__(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """Run the device on a batch: ``x`` ``(B, n)``, ``theta`` ``(p,)`` or None -> ``(B, m)``."""
        x, theta = self._check(x, theta)
        return self._forward(x, theta)

    def reference(self, x: Tensor, theta: Tensor | None = None) -> Tensor:
        """The clean differentiable function behind the device, same signature as a call.

        For plain devices it equals the call; for imperfection wrappers it is
        the wrapped device's reference, without noise, quantization or faults.
        """
        x, theta = self._check(x, theta)
        return self._reference(x, theta)

    def default_params(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """An initial θ of shape ``(p,)`` (the same tensor values on every call)."""
        return self._initial_params().to(dtype=dtype, device=device)

    def exact_vjp(self, x: Tensor, theta: Tensor | None, grad_out: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(grad_x, grad_theta)`` of ``<grad_out, reference(x, θ)>`` by autograd.

        ``grad_x`` has shape ``(B, n)``; ``grad_theta`` shape ``(p,)``, summed
        over the batch, or None when the device has no parameters.  Used to
        measure estimators, never by them.
        """
        x, theta = self._check(x, theta)
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            leaves = [x_leaf]
            theta_leaf = None
            if theta is not None:
                theta_leaf = theta.detach().requires_grad_(True)
                leaves.append(theta_leaf)
            y = self._reference(x_leaf, theta_leaf)
            if grad_out.shape != y.shape:
                raise InputShapeError(f"grad_out must have shape {tuple(y.shape)} like the output, got {tuple(grad_out.shape)}")
            # allow_unused: a parameter block may not reach the output at all.
            grads = torch.autograd.grad(y, leaves, grad_outputs=grad_out.to(y), allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]
        return grads[0], (grads[1] if theta is not None else None)

    def state_dict(self) -> dict[str, Any]:
        """What has changed since the device was made: generators, drift, counters (copies).

        A plain simulated device draws its randomness once, when it is made
        (from ``seed``), and has nothing to save; the imperfection wrappers
        save theirs and their inner device's.
        """
        return {"kind": type(self).__name__, "state": self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a :meth:`state_dict`; a state of another kind of device is refused before anything changes."""
        self.check_state(state)
        self._load_state(state["state"])

    def _load_state_unchecked(self, state: dict[str, Any]) -> None:
        """Load a state :meth:`check_state` has passed (a wrapper's inner device, checked with it)."""
        self._load_state(state["state"])
        if "inner" in state:
            self.inner._load_state_unchecked(state["inner"])  # type: ignore[attr-defined]

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless ``state`` is a :meth:`state_dict` of a device like this one."""
        if not isinstance(state, dict) or "kind" not in state or "state" not in state:
            raise ValueError(f"{self.name}: not a device state_dict (a dict with 'kind' and 'state'): {type(state).__name__}")
        if state["kind"] != type(self).__name__:
            raise ValueError(f"this state was saved by a {state['kind']} device; it cannot be loaded into a {type(self).__name__}")
        expected = set(self._state())
        if set(state["state"]) != expected:
            raise ValueError(
                f"{type(self).__name__}: the state holds {sorted(state['state'])}, expected {sorted(expected)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_features={self.in_features}, out_features={self.out_features}, n_params={self.n_params})"

    # ------------------------------------------------------- for subclasses
    def _state(self) -> dict[str, Any]:
        """The device's own changing state (copies); the default: none."""
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Put back :meth:`_state` (already checked)."""

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        """The measurement on checked inputs (theta already resolved and cast)."""
        raise NotImplementedError

    def _reference(self, x: Tensor, theta: Tensor | None) -> Tensor:
        """The clean differentiable physics on checked inputs; defaults to the call."""
        return self._forward(x, theta)

    def _initial_params(self) -> Tensor:
        """θ₀ as a CPU tensor (the default is zeros); callers cast and move it."""
        return torch.zeros(self.n_params)

    def _cached(self, key: str, dtype: torch.dtype, device: torch.device, build: Callable[[], Tensor]) -> Tensor:
        """The CPU constant ``build()`` cast to ``dtype`` and moved to ``device``, built once.

        Complex constants are cast to the complex dtype matching ``dtype``.
        Cached per (key, dtype, device), so CPU and CUDA calls each build once.
        """
        cache = self.__dict__.setdefault("_constant_cache", {})
        slot = (key, dtype, device)
        if slot not in cache:
            value = build()
            target = dtype if not value.is_complex() else complex_dtype(dtype)
            cache[slot] = value.to(dtype=target, device=device)
        return cache[slot]

    # --------------------------------------------------------------- checks
    def _check(self, x: Tensor, theta: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: x must be a real floating tensor, got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise InputShapeError(f"{self.name}: x must have shape (B, {self.in_features}), got {tuple(x.shape)}")
        if self.n_params == 0:
            return x, None
        if theta is None:
            return x, self._cached("default_params", x.dtype, x.device, self._initial_params)
        if not isinstance(theta, Tensor):
            raise TypeError(f"{self.name}: theta must be a torch.Tensor or None, got {type(theta).__name__}")
        if theta.shape != (self.n_params,):
            raise InputShapeError(f"{self.name}: theta must have shape ({self.n_params},), got {tuple(theta.shape)}")
        return x, theta.to(dtype=x.dtype, device=x.device)
