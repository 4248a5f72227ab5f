"""A whole training run saved every N steps and resumed after a crash: :class:`Checkpoint`.

A run through a device can take hours; a crash (a killed process, a power
cut) must cost at most the steps since the last checkpoint, and the resumed
run must go on exactly as the uninterrupted one would have.  That needs more
than ``model.state_dict()``: the optimiser's moments, the simulated devices'
own state (noise generators, drift so far), torch's random generator (the
next batch, the next dropout mask) and the user's own bookkeeping (the
data-loader position, the epoch).  :class:`Checkpoint` saves all of it in one
file, atomically, and puts all of it back or none of it.

What is saved:

* ``model.state_dict()``, which holds every :class:`~blackgrad.BlackBox`
  inside the model: its estimator (learned models, replay buffers, random
  generator, fidelity), its ledger, its calibration profile and its shapes;
* ``optimizer.state_dict()`` (if given);
* each device that follows the device checkpoint protocol — it has
  ``state_dict()`` and ``load_state_dict()``, as every simulated device in
  :mod:`blackgrad.devices` has — found as the device of a ``BlackBox`` in the
  model, or given in ``devices=`` (a device behind a lambda, say);
* the global random states of torch (and CUDA's, if it is in use), numpy
  and Python's :mod:`random`;
* ``extra``: a dict of the user's own (numbers, strings, tensors, lists,
  dicts; objects with ``state_dict()``/``load_state_dict()`` such as a
  learning-rate scheduler; ``torch.Generator``\\ s), restored into the same
  dict;
* for each recording (``BlackBox(record=...)``), how many calls it held.

The ledger restored is the ledger at the checkpoint: the evaluations the
crashed run made after its last checkpoint are re-done by the resumed run
and counted then, once, so the restored run's ledger equals the
uninterrupted run's.  Those evaluations were real, though, and the
recording keeps them: after :meth:`Checkpoint.restore`,
``checkpoint.abandoned[path]`` is the range of calls in that recording
which the crashed run made after its last checkpoint (a range
``range(saved, at_restart)``; the rows, device time paid for, remain valid
measurements of the device, e.g. to fit a digital twin).
"""

from __future__ import annotations

import copy
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError
from .module import BlackBox

FORMAT = "blackgrad-checkpoint"
VERSION = 1


class Checkpoint:
    """Saves a training run every ``every`` steps and restores it, exactly.

    Args:
        path: the checkpoint file (one file, replaced at every save).
        model: the ``nn.Module`` being trained (the black boxes inside it
            included).
        optimizer: its optimiser, or None.
        every: save after every ``every``-th step (a positive int).
        extra: a dict of what else the run needs to resume (an epoch
            counter, a data-loader position, a scheduler); saved with each
            checkpoint and restored into this same dict.
        devices: ``{name: device}`` for devices the checkpoint cannot find
            as a ``BlackBox``'s own device (each with ``state_dict()`` and
            ``load_state_dict()``).

    Usage::

        ckpt = Checkpoint("run.pt", model=model, optimizer=opt, every=100, extra=progress)
        for step in range(ckpt.restore(), steps):   # 0 on a fresh start
            ...one training step...
            ckpt.step(step)                          # saves after steps every-1, 2·every-1, ...

    A save writes a temporary file in the same folder, flushes it to disk
    (``fsync``) and renames it over ``path`` (``os.replace``, atomic), so a
    process killed at any moment leaves the previous checkpoint or the new
    one, never a mixture.  The file is read back with
    ``torch.load(weights_only=True)``: it holds tensors and plain Python
    values only, never code.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int = 100,
        extra: dict[str, Any] | None = None,
        devices: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Checkpoint needs the nn.Module being trained as model=, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (steps between saves), got {every!r}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict (restored in place), got {type(extra).__name__}")
        self.path = Path(path)
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.extra = extra
        self._given_devices = dict(devices or {})
        for name, device in self._given_devices.items():
            if not _has_state(device):
                raise TypeError(f"devices[{name!r}] has no state_dict()/load_state_dict(): nothing to save")
        #: per recording path: the calls the crashed run made after its last checkpoint (set by restore)
        self.abandoned: dict[str, range] = {}
        self.saves = 0

    # ------------------------------------------------------------------ saving
    def step(self, step: int) -> bool:
        """Call after step ``step`` (0-based) is done; saves when ``step + 1`` is a multiple of ``every``.

        Returns whether it saved.  The checkpoint then resumes at ``step + 1``.
        """
        if (step + 1) % self.every:
            return False
        self.save(step + 1)
        return True

    def save(self, next_step: int) -> None:
        """Save now; a restore will return ``next_step``, the first step still to do."""
        state = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(next_step),
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "optimizer_kind": None if self.optimizer is None else type(self.optimizer).__name__,
            "devices": {name: device.state_dict() for name, device in self._devices().items()},
            "rng": _rng_state(),
            "extra": None if self.extra is None else _extra_state(self.extra),
            "recordings": {path: recorder.written for path, recorder in self._recorders().items()},
        }
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)  # atomic: the old checkpoint or the new, never half of one
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        _sync_folder(folder)  # the rename itself survives a power cut
        self.saves += 1

    # --------------------------------------------------------------- restoring
    def restore(self) -> int:
        """Put back the last checkpoint, if there is one; returns the step to resume from (0: none).

        Either everything is restored (model, black boxes, optimiser,
        devices, random states, extra) or, on any error, nothing is changed
        and :class:`~blackgrad.errors.CheckpointError` says what did not fit.
        """
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a save a crash cut short
            stale.unlink(missing_ok=True)
        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read the checkpoint {self.path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not a blackgrad checkpoint")
        if state["version"] > VERSION:
            raise CheckpointError(f"{self.path} is a checkpoint of a newer format (version {state['version']}); update blackgrad")
        self._check(state)
        before = self._snapshot()
        done = []
        try:
            for part in self._parts():
                self._load(part, state)
                done.append(part)
        except Exception as err:
            for part in reversed(done):  # back to this run's own state, which fits by construction
                self._load(part, before)
            raise CheckpointError(
                f"the checkpoint {self.path} does not fit this run ({type(err).__name__}: {err}); nothing was restored"
            ) from err
        self.abandoned = {
            path: range(state["recordings"][path], recorder.written)
            for path, recorder in self._recorders().items()
            if path in state["recordings"]
        }
        return state["step"]

    # --------------------------------------------------------------- internal
    def _boxes(self) -> dict[str, BlackBox]:
        return {name: module for name, module in self.model.named_modules() if isinstance(module, BlackBox)}

    def _devices(self) -> dict[str, Any]:
        """Every device with state to save: the boxes' own (once each, under its first box's name) and those given."""
        found: dict[str, Any] = {}
        seen: set[int] = set()
        for name, box in self._boxes().items():
            # an nn.Module device is a submodule: its state is in model.state_dict() already
            if _has_state(box.fun) and not isinstance(box.fun, nn.Module) and id(box.fun) not in seen:
                seen.add(id(box.fun))
                found[f"box:{name}"] = box.fun
        for name, device in self._given_devices.items():
            if id(device) not in seen:
                seen.add(id(device))
                found[f"given:{name}"] = device
        return found

    def _recorders(self) -> dict[str, Any]:
        return {str(box.recorder.path): box.recorder for box in self._boxes().values() if box.recorder is not None}

    def _check(self, state: dict[str, Any]) -> None:
        """Refuse, before anything changes, a checkpoint of another layout: say what differs."""
        problems = []
        mine = self.model.state_dict()
        saved = state["model"]
        missing, unexpected = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
        if missing:
            problems.append(f"this model has {_few(missing)} which the checkpoint lacks")
        if unexpected:
            problems.append(f"the checkpoint has {_few(unexpected)} which this model lacks")
        for key in sorted(set(mine) & set(saved)):
            a, b = mine[key], saved[key]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (a.shape != b.shape or a.dtype != b.dtype):
                problems.append(f"{key} is {tuple(b.shape)} {b.dtype} in the checkpoint, {tuple(a.shape)} {a.dtype} here")
        for name, box in self._boxes().items():
            extra = saved.get(f"{name}._extra_state" if name else "_extra_state")
            if isinstance(extra, dict) and "estimator" in extra:
                try:
                    box.estimator.check_state(extra["estimator"])
                except ValueError as err:
                    problems.append(f"black box {name or '(the model)'!r}: {err}")
        kind = None if self.optimizer is None else type(self.optimizer).__name__
        if kind != state["optimizer_kind"]:
            problems.append(f"the checkpoint's optimiser is {state['optimizer_kind']}, this run's {kind}")
        devices = self._devices()
        if set(devices) != set(state["devices"]):
            problems.append(f"the checkpoint holds the devices {sorted(state['devices'])}, this run has {sorted(devices)}")
        else:
            for name, device in devices.items():
                check = getattr(device, "check_state", None)  # a device of one's own may have none
                try:
                    if check is not None:
                        check(state["devices"][name])
                except ValueError as err:
                    problems.append(f"device {name}: {err}")
        if (state["extra"] is None) != (self.extra is None):
            problems.append("the checkpoint has extra= and this run none, or the other way round")
        elif self.extra is not None:
            for key, (how, _) in state["extra"].items():
                if how != "value" and (key not in self.extra or _extra_kind(self.extra[key]) != how):
                    problems.append(f"extra[{key!r}] was saved with its {how}, which this run's extra does not have")
        if problems:
            raise CheckpointError(
                f"the checkpoint {self.path} was saved from another layout than this run's, so nothing was restored: "
                + "; ".join(problems)
                + ". Build the model (and optimiser, devices, extra) as the run that saved it did, or start afresh "
                "with another path"
            )

    def _snapshot(self) -> dict[str, Any]:
        """This run's state now, in the checkpoint's layout (to roll a failed restore back)."""
        return {
            "step": 0,
            "model": {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in self.model.state_dict().items()},
            "optimizer": None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
            "devices": {name: copy.deepcopy(device.state_dict()) for name, device in self._devices().items()},
            "rng": _rng_state(),
            "extra": None if self.extra is None else _extra_state(self.extra),
        }

    def _parts(self) -> list[str]:
        """What a restore loads, in order: each part is loaded whole or raises, so it can be undone alone."""
        return ["model", "optimizer", *(f"device {name}" for name in self._devices()), "rng", "extra"]

    def _load(self, part: str, state: dict[str, Any]) -> None:
        if part == "model":
            self.model.load_state_dict(state["model"])
        elif part == "optimizer":
            if self.optimizer is not None:
                self.optimizer.load_state_dict(state["optimizer"])
        elif part.startswith("device "):
            name = part[len("device ") :]
            self._devices()[name].load_state_dict(state["devices"][name])
        elif part == "rng":
            _set_rng_state(state["rng"])
        elif self.extra is not None:
            for key, (how, value) in state["extra"].items():
                if how == "state_dict":
                    self.extra[key].load_state_dict(value)
                elif how == "generator":
                    self.extra[key].set_state(value)
                else:
                    self.extra[key] = copy.deepcopy(value)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, every={self.every}, saves={self.saves})"


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _extra_kind(value: Any) -> str:
    if isinstance(value, torch.Generator):
        return "generator"
    if _has_state(value):
        return "state_dict"
    return "value"


def _extra_state(extra: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    state = {}
    for key, value in extra.items():
        how = _extra_kind(value)
        if how == "generator":
            state[key] = (how, value.get_state())
        elif how == "state_dict":
            state[key] = (how, copy.deepcopy(value.state_dict()))
        else:
            state[key] = (how, copy.deepcopy(value))
    return state


def _rng_state() -> dict[str, Any]:
    """Torch's (and CUDA's, once in use), numpy's and Python's global random states, as tensors and plain values."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it is on disk (where the OS allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(descriptor)
