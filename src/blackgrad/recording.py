"""Every device evaluation on disk: ``BlackBox(..., record=path)``, :class:`Recorder` and :class:`Recording`.

A recording is an HDF5 file (through h5py, the optional extra
``blackgrad[record]``).  HDF5 because it is the long-standing format of
instrument and simulation data, read by every numerical environment; and
because its single-writer/multiple-reader mode (SWMR) keeps the file
consistent on disk at every moment: a writer killed mid-call leaves a file
that opens, holding every call flushed before.  (Zarr and Parquet would need
one file or row group per call to offer the same.)

Layout (version 1), fixed before SWMR starts, as SWMR requires:

* ``/boxes``: one JSON text per black box recorded — its name, input shape,
  number of device parameters ``p`` and output shape;
* ``/calls``: one row per successful device call — ``call`` (its number in
  the file), ``box`` (a row of ``/boxes``), ``kind`` (:data:`KINDS`),
  ``time`` (Unix seconds when it returned), ``device_call`` (the box's
  ``calls.device_calls`` then: failed attempts included), ``samples``,
  ``width_in`` and ``width_out`` (numbers per sample), ``complex`` and
  ``offset``;
* ``/values``: float64, one call after another: its ``samples × width_in``
  inputs ``α = (x, θ)`` (θ repeated on every row, as estimators see it),
  then its ``samples × width_out`` outputs.  Complex values are stored as
  (real, imaginary) pairs.

Each call writes its values, then its ``/calls`` row, then flushes: a call
whose row is missing or empty was cut short and is left out on reading.
Failed attempts (the device raised or returned NaN) are in the ledger's
``failed`` count, not here: they have no output to record.
"""

from __future__ import annotations

import json
import math
import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import BlackGradError

#: the kinds of evaluation, as stored (their index) in ``/calls``
KINDS = ("forward", "probe", "calibration")

FORMAT = "blackgrad-recording"
VERSION = 1

_CALL = np.dtype(
    [
        ("call", "<i8"),
        ("box", "<i4"),
        ("kind", "u1"),
        ("complex", "u1"),
        ("time", "<f8"),
        ("device_call", "<i8"),
        ("samples", "<i8"),
        ("width_in", "<i4"),
        ("width_out", "<i4"),
        ("offset", "<i8"),
    ]
)
_BOX_TEXT = "S1024"  # one box's JSON description: name and shapes


class RecordingError(BlackGradError):
    """A recording cannot be written or read (not a recording, no h5py, a disk error)."""


def _h5py():
    try:
        import h5py
    except ImportError:
        raise RecordingError(
            "recording device evaluations needs h5py: pip install 'blackgrad[record]' (or pip install h5py)"
        ) from None
    return h5py


class Recorder:
    """Appends every device evaluation of one or more black boxes to the HDF5 file ``path``.

    Give it to ``BlackBox(..., record=recorder)`` (or give a path, and the
    box makes its own); one recorder may serve several boxes, each kept
    apart in the file.  Every successful device call is written and flushed
    before the evaluation returns to the estimator, so a process killed at
    any moment leaves a readable file that lacks at most the call in flight.

    A file that exists already is continued: its whole calls are kept (a
    call cut short by a crash is dropped) and a box with the same name and
    shapes as one in it goes on in the same entry.  Continuing rewrites the
    file once (a file left open by a killed writer cannot be reopened for
    writing in place), to a temporary file renamed over it.

    One process writes a recording at a time: a lock file beside it
    (``<name>.lock``, left in place) makes a second writer fail at once
    instead of writing where nobody reads.  In one process, boxes given the
    same path share one recorder (:meth:`shared`).

    Not picklable (it holds its file open); a deep copy of a model shares it.
    """

    _open: "weakref.WeakValueDictionary[Path, Recorder]" = weakref.WeakValueDictionary()

    @classmethod
    def shared(cls, path: str | os.PathLike) -> "Recorder":
        """The recorder this process has open on ``path``, or a new one (what ``BlackBox(record=path)`` uses)."""
        recorder = cls._open.get(Path(path).resolve())
        if recorder is not None and recorder._file is not None:
            return recorder
        return cls(path)

    def __init__(self, path: str | os.PathLike) -> None:
        h5py = _h5py()
        self._file = None
        self.path = Path(path)
        key = self.path.resolve()
        other = self._open.get(key)
        if other is not None and other._file is not None:
            raise RecordingError(
                f"{self.path} is being recorded into already by {other!r} in this process; give that recorder "
                "to every box (record=recorder), or BlackBox(record=path), which shares it"
            )
        self._lock = _lock(self.path)
        try:
            self._start(h5py)
        except BaseException:
            os.close(self._lock)
            raise
        self._open[key] = self

    def _start(self, h5py: Any) -> None:
        boxes: list[dict[str, Any]] = []
        calls = np.zeros(0, _CALL)
        values = np.zeros(0)
        if self.path.exists():
            with Recording(self.path) as old:
                boxes, calls, values = old.boxes, old.calls, old._values_read()
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            # SWMR needs the newest file format and every dataset made before it starts
            file = h5py.File(temporary, "w", libver="latest")
            file.attrs["format"] = FORMAT
            file.attrs["version"] = VERSION
            file.create_dataset("values", data=values, maxshape=(None,), chunks=(1 << 16,), dtype="<f8")
            file.create_dataset("calls", data=calls, maxshape=(None,), chunks=(1024,), dtype=_CALL)
            texts = np.array([json.dumps(box).encode() for box in boxes], dtype=_BOX_TEXT)
            file.create_dataset("boxes", data=texts, maxshape=(None,), chunks=(64,), dtype=_BOX_TEXT)
            file.flush()
            file.close()
            os.replace(temporary, self.path)  # until here a kill leaves the old file (or none) in place
            # reopened straight into SWMR writing: at no moment is the file open for plain writing,
            # which a kill would leave unreadable
            access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
            access.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
            flags = h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE
            self._file = h5py.File(h5py.h5f.open(os.fsencode(self.path), flags, access))
        except OSError as err:
            raise RecordingError(f"cannot write the recording {self.path}: {err}") from err
        self._boxes = boxes
        self._ids: dict[int, int] = {}  # id(prober) -> row of /boxes
        self._probers: list[Any] = []  # kept alive, so that no other prober reuses an id
        self._calls = len(calls)
        self._end = int(values.shape[0])

    @property
    def written(self) -> int:
        """Whole calls in the file so far (a continued file's included)."""
        return self._calls

    # ------------------------------------------------------------------ writing
    def write(self, prober: Any, kind: str, x: Tensor, theta: Tensor | None, y: Tensor) -> None:
        """Record one device call of ``prober``: flat inputs ``x`` ``(N, n)``, θ ``(p,)``, outputs ``y`` ``(N, m)``."""
        if self._file is None:
            raise RecordingError(f"the recorder of {self.path} is closed")
        alpha = x.detach()
        if theta is not None:
            alpha = torch.cat([alpha, theta.detach().to(alpha.dtype).expand(alpha.shape[0], -1)], dim=1)
        output = y.detach().reshape(y.shape[0], -1)
        complex_ = alpha.is_complex() or output.is_complex()
        inputs, outputs = _as_real(alpha), _as_real(output)
        box = self._box(prober)
        row = np.zeros(1, _CALL)
        row[0] = (self._calls, box, KINDS.index(kind), complex_, time.time(), prober.ledger.device_calls,
                  inputs.shape[0], inputs.shape[1], outputs.shape[1], self._end)
        block = np.concatenate([inputs.reshape(-1), outputs.reshape(-1)])
        try:
            values, calls = self._file["values"], self._file["calls"]
            values.resize((self._end + block.size,))
            values[self._end :] = block
            calls.resize((self._calls + 1,))  # the call's row last: it vouches for the values before it
            calls[self._calls] = row[0]
            self._file.flush()
        except OSError as err:
            raise RecordingError(
                f"could not record a {kind} call of {inputs.shape[0]} samples of {prober.name!r} in {self.path} "
                f"({err}); the call itself was made and is counted"
            ) from err
        self._calls += 1
        self._end += block.size

    def _box(self, prober: Any) -> int:
        index = self._ids.get(id(prober))
        if index is not None:
            return index
        description = {
            "name": prober.name,
            "in_shape": list(prober.in_shape),
            "n_params": prober.n_params,
            "out_shape": list(prober.out_shape),
        }
        text = json.dumps(description).encode()
        if len(text) > int(_BOX_TEXT[1:]):
            raise RecordingError(f"the name of black box {prober.name!r} is too long to record (at most about 900 characters)")
        # a box of a continued file, or one a process rebuilt after a crash, goes on in its entry
        index = next((i for i, box in enumerate(self._boxes) if box == description and i not in self._ids.values()), None)
        if index is None:
            boxes = self._file["boxes"]
            index = len(self._boxes)
            boxes.resize((index + 1,))
            boxes[index] = text
            self._boxes.append(description)
        self._ids[id(prober)] = index
        self._probers.append(prober)
        return index

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the file (every call is on disk already)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            os.close(self._lock)  # releases the lock

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - at interpreter exit h5py may be gone
            pass

    def __deepcopy__(self, memo: dict) -> "Recorder":
        return self  # a copied model records into the same file, as several boxes may

    def __reduce__(self):
        raise TypeError(
            f"a Recorder cannot be pickled: it holds {self.path} open for writing; save the model's state_dict, "
            "and give the new process's BlackBox record=path to continue the recording"
        )

    def __repr__(self) -> str:
        return f"Recorder({str(self.path)!r}, calls={self._calls}, boxes={len(self._boxes)})"


def _lock(path: Path) -> int:
    """Hold ``<path>.lock`` exclusively (where the OS offers ``flock``); returns its descriptor."""
    lock = path.with_name(path.name + ".lock")
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RecordingError(f"cannot write the recording {path}: {err}") from err
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return descriptor
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise RecordingError(
            f"{path} is being recorded into by another process (it holds {lock}); one process writes a recording "
            "at a time: stop it, or record into another file"
        ) from None
    return descriptor


def _as_real(t: Tensor) -> np.ndarray:
    """``(N, k)`` float64 numpy rows; complex entries as (real, imaginary) pairs, ``(N, 2k)``."""
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj()).reshape(t.shape[0], -1)
    return t.to("cpu", torch.float64).numpy()


class Recording:
    """A recording read back (:class:`Recorder` wrote it; it may be still being written, or cut short).

    ``boxes``: each box's name and shapes; ``calls``: the whole calls, a
    numpy structured array (fields as in the module's docstring);
    :meth:`rows` the inputs and outputs; :meth:`summary` the counts.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        h5py = _h5py()
        self.path = Path(path)
        if not self.path.exists():
            raise RecordingError(f"no recording {self.path}: no such file")
        if not self.path.is_file():
            raise RecordingError(f"{self.path} is not a file; a recording is the HDF5 file given to BlackBox(record=...)")
        try:
            # SWMR reading: a file whose writer is running, or was killed, opens too
            self._file = h5py.File(self.path, "r", swmr=True, libver="latest")
        except OSError:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise RecordingError(f"{self.path} is not an HDF5 file, or is damaged ({err})") from None
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise RecordingError(f"{self.path} is an HDF5 file but not a blackgrad recording")
        if int(self._file.attrs.get("version", 0)) > VERSION:
            self._file.close()
            raise RecordingError(f"{self.path} is a recording of a newer format (version {self._file.attrs['version']}); update blackgrad")
        self.boxes = [json.loads(text.decode()) for text in self._file["boxes"][:]]
        calls = self._file["calls"][:]
        stored = self._file["values"].shape[0]
        # a call cut short: its row resized but unwritten (no samples), or values it vouches for missing
        whole = len(calls)
        while whole and (
            calls[whole - 1]["samples"] == 0
            or _end(calls[whole - 1]) > stored
            or calls[whole - 1]["box"] >= len(self.boxes)
        ):
            whole -= 1
        self.calls = calls[:whole]
        self.cut_short = whole < len(calls) or (stored > (_end(calls[whole - 1]) if whole else 0))

    def _values_read(self) -> np.ndarray:
        return self._file["values"][: _end(self.calls[-1])] if len(self.calls) else np.zeros(0)

    def _box_index(self, box: int | str | None) -> int:
        if isinstance(box, int):
            if not 0 <= box < len(self.boxes):
                raise RecordingError(f"{self.path} holds boxes 0 to {len(self.boxes) - 1}, not {box}")
            return box
        named = [i for i, b in enumerate(self.boxes) if box is None or b["name"] == box]
        if len(named) != 1:
            names = ", ".join(f"{i}: {b['name']!r}" for i, b in enumerate(self.boxes)) or "none"
            what = "boxes" if box is None else f"boxes named {box!r}"
            raise RecordingError(f"{self.path} holds {len(named)} {what}; say which with box= (its boxes: {names})")
        return named[0]

    def rows(self, box: int | str | None = None, kinds: tuple[str, ...] = KINDS, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """Every recorded sample of one box: inputs ``α = (x, θ)`` ``(N, n + p)`` and outputs ``(N, m)``.

        ``box``: its index or name (needed when the file holds several);
        ``kinds``: which evaluations (default all).  In call order.
        """
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise RecordingError(f"unknown kinds {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
        index = self._box_index(box)
        wanted = [KINDS.index(kind) for kind in kinds]
        values = self._file["values"]
        inputs, outputs = [], []
        for call in self.calls[(self.calls["box"] == index) & np.isin(self.calls["kind"], wanted)]:
            n, a, b, start = int(call["samples"]), int(call["width_in"]), int(call["width_out"]), int(call["offset"])
            block = values[start : start + n * (a + b)]
            x, y = torch.from_numpy(block[: n * a].reshape(n, a)), torch.from_numpy(block[n * a :].reshape(n, b))
            if call["complex"]:
                x, y = (torch.view_as_complex(t.reshape(n, -1, 2).contiguous()) for t in (x, y))
            inputs.append(x)
            outputs.append(y)
        if not inputs:
            raise RecordingError(f"{self.path} holds no {'/'.join(kinds)} evaluation of box {index} ({self.boxes[index]['name']!r})")
        x, y = torch.cat(inputs), torch.cat(outputs)
        if not x.is_complex():
            x, y = x.to(dtype), y.to(dtype)
        return x, y

    def summary(self) -> dict[str, Any]:
        """Per box: its name and shapes, and the calls and samples of each kind; the time span."""
        boxes = []
        for index, box in enumerate(self.boxes):
            mine = self.calls[self.calls["box"] == index]
            kinds = {
                kind: {"calls": int((mine["kind"] == k).sum()), "samples": int(mine["samples"][mine["kind"] == k].sum())}
                for k, kind in enumerate(KINDS)
            }
            boxes.append({**box, "index": index, "kinds": kinds})
        times = self.calls["time"]
        return {
            "path": str(self.path),
            "version": int(self._file.attrs["version"]),
            "calls": len(self.calls),
            "samples": int(self.calls["samples"].sum()),
            "first": float(times.min()) if len(times) else None,
            "last": float(times.max()) if len(times) else None,
            "cut_short": bool(self.cut_short),
            "boxes": boxes,
        }

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.calls)


def _end(call: np.void) -> int:
    """Where a call's values end in ``/values``."""
    return int(call["offset"]) + int(call["samples"]) * (int(call["width_in"]) + int(call["width_out"]))


def describe(summary: dict[str, Any]) -> str:
    """The text of ``blackgrad record info``."""
    lines = [f"{summary['path']}: a blackgrad recording (format {summary['version']}), {summary['calls']} calls, {summary['samples']} samples"]
    if summary["first"] is not None:
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary["first"]))
        lines[0] += f", from {start} over {summary['last'] - summary['first']:.3g} s"
    for box in summary["boxes"]:
        n = math.prod(box["in_shape"])
        lines.append(
            f"  box {box['index']} {box['name']!r}: inputs {tuple(box['in_shape'])} + {box['n_params']} parameters "
            f"(α of {n + box['n_params']}), outputs {tuple(box['out_shape'])}"
        )
        for kind, count in box["kinds"].items():
            if count["calls"]:
                lines.append(f"    {kind}: {count['samples']} samples in {count['calls']} calls")
    if summary["cut_short"]:
        lines.append("  the last call was cut short (the writer stopped inside it) and is left out")
    return "\n".join(lines)
