"""The benchmark's record file: ``records.jsonl``, one JSON line per finished run.

A line is appended, in one write and synced to disk, only once its run has
finished, so an interrupted benchmark leaves whole records behind — except
where the process died inside that one write (killed, power lost, disk
full): then the last line has no newline.  Reading tolerates exactly that
case, with a warning, and the run it belonged to counts as not recorded; a
line that does not parse anywhere else is a damaged file and an error.

A record names its run by task, method and seed, and holds under
``"config"`` every setting that changes what the run measures (the epochs,
the data sizes, the task's training settings, the package version):
:func:`blackgrad.bench.run_benchmark` resumes a folder only where every
record's configuration is the one it would train now.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

#: the record file's name inside a benchmark folder
RECORDS = "records.jsonl"

#: the fields that name a run; with ``"config"``, they identify it
KEY = ("task", "method", "seed")


class RecordsWarning(UserWarning):
    """A record file's last line was cut short (the run it belonged to will be run again)."""


class RecordsError(ValueError):
    """A record file is damaged, or holds records that cannot be resumed or reported."""


def key(record: dict[str, Any]) -> tuple[str, str, int]:
    """The run a record belongs to: (task, method, seed)."""
    return record["task"], record["method"], record["seed"]


def _scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The whole records in ``path`` and the length in bytes of the whole lines holding them."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1  # everything after the last newline is a cut-short line
    records = []
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise RecordsError(
                f"{path}, line {number}, is not a JSON record ({err}); the file is damaged: "
                f"repair or delete that line, or start a new folder"
            ) from None
        if not isinstance(record, dict) or any(field not in record for field in KEY):
            raise RecordsError(f"{path}, line {number}, is not a benchmark record (it needs {', '.join(KEY)})")
        records.append(record)
    if whole < len(data):
        warnings.warn(
            f"{path}: the last line ({len(data) - whole} bytes) was cut short while being written "
            f"and is ignored; its run counts as not recorded",
            RecordsWarning,
            stacklevel=3,
        )
    return records, whole


def read(path: Path) -> list[dict[str, Any]]:
    """The whole records in ``path``, in file order (none if there is no such file).

    A cut-short last line is left out with a :class:`RecordsWarning`; the
    file is not changed.
    """
    path = Path(path)
    if not path.exists():
        return []
    return _scan(path)[0]


def drop_cut_short_line(path: Path) -> None:
    """Cut a cut-short last line (see :func:`read`) off the file, so that the next append starts a line."""
    path = Path(path)
    if path.exists():
        whole = path.read_bytes().rfind(b"\n") + 1
        if whole < path.stat().st_size:
            os.truncate(path, whole)


class Appender:
    """Appends records to a record file, each in one write synced to disk.

    Holds an exclusive lock on the file (where the OS offers ``flock``) from
    opening to :meth:`close`, so that two benchmarks writing the same
    folder at once do not both run, and record, the same runs.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise RecordsError(
                f"{self.path} is being written by another benchmark; wait for it to finish, or use another folder"
            ) from None

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        view = memoryview(data)
        while view:  # a regular file takes it all at once; a short write is finished, not dropped
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the lock
            self._fd = -1

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
