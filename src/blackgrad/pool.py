"""Device pools: one evaluation request spread over several identical devices.

A pool is itself a device — ``pool(x)`` or ``pool(x, theta)`` — so it goes
wherever a device does: ``BlackBox(DevicePool([...]))``.  Each call (a
forward batch, or the probes of a backward pass that the prober packs into
one call) is cut into contiguous shares, one per worker; the workers evaluate
their shares at the same time and the pool puts the results back in the
order of the batch.

* :class:`DevicePool` runs its workers in threads (devices that wait — an
  instrument, a remote device, code that releases the GIL) or in processes
  (CPU-bound Python simulators; each process builds its own device).
* :class:`RayPool` runs them as Ray actors, on a local Ray or a cluster
  (the ``blackgrad[ray]`` extra).

Faults.  A worker that raises, returns unusable output, dies, or does not
answer within the pool's ``timeout`` has its share retried on the pool's
other workers (split between them), and takes no further part in that
request; a dead (or timed-out, hence killed) process or actor is started
afresh at the next request.  Only output that came back whole and in shape is used, so
no sample is lost or returned twice.  Every worker keeps a ledger (samples,
calls, failures, seconds, last error) read with :meth:`status`.  When every
worker has failed on a request, :class:`~blackgrad.errors.PoolError` names
each of them with its error, and nothing of the request is returned.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as futures
import functools
import hashlib
import hmac
import math
import multiprocessing
from multiprocessing import connection as mp_connection
import os
import pickle
import re
import secrets
import signal
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor
import torch

from .errors import PoolError

__all__ = ["DevicePool", "RayPool", "PoolStatus", "WorkerLedger"]


@dataclass
class WorkerLedger:
    """What one worker of a pool did.

    Attributes:
        worker: how the pool names it (``"thread 2"``, ``"process 0"``, ``"ray actor 1"``).
        samples: samples it evaluated and returned usable output for.
        calls: shares sent to it.
        failures: shares on which it raised, returned unusable output, or died.
        failed_samples: samples in those shares (each retried elsewhere).
        seconds: wall time of its successful calls, measured where it runs.
        restarts: times its process or actor died and was started afresh.
        alive: False while its process or actor is dead (until the next request restarts it).
        last_error: the latest failure, as ``"Type: message"``.
    """

    worker: str
    samples: int = 0
    calls: int = 0
    failures: int = 0
    failed_samples: int = 0
    seconds: float = 0.0
    restarts: int = 0
    alive: bool = True
    last_error: str | None = None


@dataclass
class PoolStatus:
    """A pool's ledger: one :class:`WorkerLedger` per worker and the totals.

    ``samples`` counts the samples evaluated successfully, each once, by
    one worker — the samples the pool returned, plus, in a request that
    failed as a whole, its shares that had succeeded; ``failed_samples``
    counts the samples of shares that failed (and were retried elsewhere).
    """

    name: str
    requests: int
    workers: list[WorkerLedger] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(w.samples for w in self.workers)

    @property
    def calls(self) -> int:
        return sum(w.calls for w in self.workers)

    @property
    def failures(self) -> int:
        return sum(w.failures for w in self.workers)

    @property
    def failed_samples(self) -> int:
        return sum(w.failed_samples for w in self.workers)

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.requests} requests, {self.samples} samples, {self.failures} failed shares"]
        for w in self.workers:
            state = "" if w.alive else "  DEAD"
            error = f"  last error: {w.last_error}" if w.last_error else ""
            lines.append(
                f"  {w.worker}: {w.samples} samples in {w.calls} calls, {w.failures} failed "
                f"({w.failed_samples} samples), {w.seconds:.3g} s, {w.restarts} restarts{state}{error}"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------- workers
class _Worker:
    """One slot of a pool: runs a share and says whether a failure killed it."""

    def __init__(self, label: str) -> None:
        self.ledger = WorkerLedger(label)

    def submit(self, args: tuple[Any, ...]) -> futures.Future:
        """Start evaluating ``args``; the future gives ``(output, seconds)``."""
        raise NotImplementedError

    def died(self, err: BaseException) -> bool:
        """Whether ``err`` means the worker itself is gone (not just that its device raised)."""
        return False

    def abandon(self, future: futures.Future) -> bool:
        """Give up on a share that ran past the pool's timeout; True if that killed the worker.

        A thread cannot be stopped: it stays out of the pool's requests until
        its call returns, and what it returns is dropped.
        """
        self.busy = future
        return False

    def drop(self, future: Any) -> bool:
        """Forget a share whose request ended early (an interrupt); True if that killed the worker.

        By default as :meth:`abandon`: a thread sits out until its call
        returns, a process is killed (its answer would otherwise be read as
        the answer to its next share).
        """
        return self.abandon(future)

    def ready(self) -> bool:
        """Whether the worker can take a share (a thread still in an abandoned call cannot)."""
        busy = getattr(self, "busy", None)
        return busy is None or busy.done()

    def restart(self) -> None:
        raise NotImplementedError

    def attribute(self, name: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _timed_call(device: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    start = time.perf_counter()
    output = device(*args)
    return output, time.perf_counter() - start


class _TensorData:
    """A CPU tensor travelling to or from another process as a numpy array.

    Pickling a tensor goes through ``torch.save`` (slow); a numpy array
    pickles as its raw bytes.  The receiver gets a tensor of the same dtype
    and shape back, on the CPU.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __getstate__(self) -> np.ndarray:
        return self.array

    def __setstate__(self, array: np.ndarray) -> None:
        self.array = array


def _pack(value: Any) -> Any:
    if isinstance(value, Tensor) and value.dtype not in (torch.bfloat16,) and not value.is_quantized:
        return _TensorData(value.detach().cpu().resolve_conj().resolve_neg().numpy())
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, _TensorData):
        array = value.array if value.array.flags.writeable else value.array.copy()  # Ray hands out read-only views
        return torch.from_numpy(array)
    return value


def _timed_remote_call(device: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float]:
    """:func:`_timed_call` where the worker runs, with tensors packed both ways."""
    output, seconds = _timed_call(device, tuple(_unpack(a) for a in args))
    return _pack(output), seconds


class _ThreadWorker(_Worker):
    def __init__(self, label: str, device: Callable[..., Any], executor: futures.ThreadPoolExecutor) -> None:
        super().__init__(label)
        self.device = device
        self.executor = executor

    def submit(self, args: tuple[Any, ...]) -> futures.Future:
        return self.executor.submit(_timed_call, self.device, args)

    def attribute(self, name: str) -> Any:
        return getattr(self.device, name)


def _received(result: tuple[Any, float]) -> tuple[Any, float]:
    output, seconds = result
    return _unpack(output), seconds


# In a worker process: the loop that builds the device and answers the pool over one pipe.
#
# A message to the worker is one tag byte and a pickle: b"E" + the packed
# arguments of a share (evaluate), b"A" + an attribute name, b"Q" (quit).
# The answer is a pickle of (True, value) or (False, exception); the first
# answer, once the device is built, is (True, pid).
_EVALUATE, _ATTRIBUTE, _QUIT = b"E", b"A", b"Q"


def _process_main(conn: Any, blob: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the pool
    torch.set_num_threads(1)  # k workers on a machine: one torch thread each, as the bench runner does
    try:
        kind, obj = pickle.loads(blob)
        device = obj() if kind == "factory" else obj
        reply = _dumps_reply(True, os.getpid())
    except Exception as err:
        reply = _error_reply(err)
        device = None
    try:
        conn.send_bytes(reply)
        while device is not None:
            message = conn.recv_bytes()
            tag, body = message[:1], memoryview(message)[1:]
            if tag == _EVALUATE:
                # plain pickle both ways, of tensors packed as arrays: by value, not through torch's shared memory
                try:
                    reply = _dumps_reply(True, _timed_remote_call(device, pickle.loads(body)))
                except Exception as err:
                    reply = _error_reply(err)
            elif tag == _ATTRIBUTE:
                try:
                    reply = _dumps_reply(True, getattr(device, pickle.loads(body)))
                except Exception as err:
                    reply = _error_reply(err)
            else:
                break
            conn.send_bytes(reply)
    except (EOFError, OSError):  # the pool's end is closed: the pool was closed, or its process ended
        pass
    finally:
        conn.close()


def _dumps_reply(ok: bool, value: Any) -> bytes:
    return pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)


def _error_reply(err: Exception) -> bytes:
    try:
        return pickle.dumps((False, err), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled: its type and message as text
        return pickle.dumps((False, f"{type(err).__name__}: {err}"), protocol=pickle.HIGHEST_PROTOCOL)


class ProcessDied(RuntimeError):
    """A worker process of a :class:`DevicePool` ended (crashed, exited, or was killed) while the pool needed it."""


def _raise_reply(reply: bytes) -> Any:
    """The value of a worker's answer, or its exception raised here."""
    try:
        answer = pickle.loads(reply)
    except Exception as err:  # e.g. an exception class the worker has and this process cannot import
        raise RuntimeError(f"the worker's answer could not be unpickled here ({type(err).__name__}: {err})") from err
    ok, value = answer
    if ok:
        return value
    raise RuntimeError(value) if isinstance(value, str) else value


class _ProcessShare:
    """A share in flight on a worker process: ready when its pipe has an answer or the process has ended.

    The pool waits on the pipes and the processes' sentinels themselves, with
    one ``multiprocessing.connection.wait`` in its own thread: no executor
    thread or future between the pipe and the pool.
    """

    __slots__ = ("worker", "conn", "sentinel", "error")

    def __init__(self, worker: "_ProcessWorker", error: BaseException | None = None) -> None:
        self.worker, self.conn, self.sentinel, self.error = worker, worker.conn, worker.process.sentinel, error

    def done(self) -> bool:
        return self.error is not None or bool(mp_connection.wait([self.conn, self.sentinel], timeout=0))

    def result(self) -> tuple[Any, float]:
        if self.error is not None:
            raise self.error
        return _received(_raise_reply(self.worker.receive()))


class _ProcessWorker(_Worker):
    """One worker process of its own, running :func:`_process_main` on one pipe."""

    def __init__(self, label: str, blob: bytes, context: Any, start_timeout: float) -> None:
        super().__init__(label)
        self.blob, self.context, self.start_timeout = blob, context, start_timeout
        self._start()

    def _start(self) -> None:
        """Start the process; :meth:`wait_started` waits for it (so that k processes start at once)."""
        self.pid: int | None = None  # until it has built its device
        self.conn, child = self.context.Pipe(duplex=True)
        self.process = self.context.Process(
            target=_process_main, args=(child, self.blob), name=f"blackgrad-pool {self.ledger.worker}"
        )
        try:
            self.process.start()
        finally:
            child.close()  # the child's copy only: a dead child then reads as the end of its pipe here
        # closes the pipe and ends the process when the worker is closed or dropped; at exit, see _stop_at_exit
        self._finalizer = weakref.finalize(self, _stop_process, self.process, self.conn)
        self._finalizer.atexit = False
        _LIVE_PROCESS_WORKERS.add(self)

    def wait_started(self) -> None:
        try:
            if not mp_connection.wait([self.conn, self.process.sentinel], timeout=self.start_timeout):
                raise TimeoutError(f"no answer within the start timeout of {self.start_timeout:g} s")
            self.pid = _raise_reply(self.receive())
        except Exception as err:
            self.process.kill()
            self._finalizer()
            raise PoolError(
                f"{self.ledger.worker} did not start: {_describe(err)}. The device or factory is built in the "
                "worker process: it must be importable there (a module-level function or class, not a lambda "
                "or a function defined in an interactive session) and must not fail when called"
            ) from err

    def receive(self) -> bytes:
        """The process's next answer (waiting for it); :class:`ProcessDied` if the process ended instead."""
        mp_connection.wait([self.conn, self.process.sentinel])
        try:
            if self.conn.poll(0):  # an answer, or the end of the pipe; what it wrote before it ended comes first
                return self.conn.recv_bytes()
        except (EOFError, OSError):  # the end of the pipe, or a partial answer: it ended while writing
            pass
        raise self._death()

    def _death(self) -> ProcessDied:
        self.process.join(timeout=5)  # it has ended or closed its pipe: its exit code follows
        return ProcessDied(f"its process (pid {self.process.pid}) {_exit_status(self.process.exitcode)}")

    def submit(self, args: tuple[Any, ...]) -> _ProcessShare:
        payload = pickle.dumps(tuple(_pack(a) for a in args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.conn.send_bytes(_EVALUATE + payload)
        except OSError:  # its pipe is closed: the process ended between requests
            return _ProcessShare(self, self._death())
        return _ProcessShare(self)

    def died(self, err: BaseException) -> bool:
        return isinstance(err, ProcessDied)

    def abandon(self, future: Any) -> bool:
        self.process.kill()  # the process this worker started; the next request starts another
        return True

    def drop(self, future: Any) -> bool:
        # a share on its way or being answered: its answer would be read as the next share's, so the process goes
        return isinstance(future, _ProcessShare) and future.error is None and self.abandon(future)

    def restart(self) -> None:
        self._finalizer()
        self._start()
        self.wait_started()

    def attribute(self, name: str) -> Any:
        self.conn.send_bytes(_ATTRIBUTE + pickle.dumps(name, protocol=pickle.HIGHEST_PROTOCOL))
        return _raise_reply(self.receive())

    def close(self) -> None:
        if self.pid is None and self.process.is_alive():  # still building its device: nothing to wait for
            self.process.kill()
        self._finalizer()


def _exit_status(code: int | None) -> str:
    if code is None:
        return "closed its pipe and did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


_LIVE_PROCESS_WORKERS: "weakref.WeakSet[_ProcessWorker]" = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    """Stop the worker processes of pools left open, before multiprocessing joins its children at exit.

    A worker process ends when its pipe closes, but multiprocessing's own
    exit hook would join it before this process's pipes are closed: it was
    registered earlier (``multiprocessing.connection`` is imported above),
    so this one runs first.
    """
    for worker in list(_LIVE_PROCESS_WORKERS):
        worker._finalizer()


def _stop_process(process: Any, conn: Any) -> None:
    """Ask a worker process to quit, wait a little, then kill it; close its pipe."""
    if process.is_alive():
        try:
            conn.send_bytes(_QUIT)
        except OSError:
            pass
        process.join(timeout=5)
        if process.is_alive():  # stuck in its device
            process.kill()
            process.join(timeout=5)
    conn.close()


def _describe(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # a Ray task error carries the device's own exception
    if isinstance(cause, BaseException):
        err = cause
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    if len(lines) > 1:  # a remote traceback: its first line says where, its last line what
        lines = [lines[0], "...", lines[-1]]
    return f"{type(err).__name__}: {' '.join(lines)}".rstrip(": .")


# ------------------------------------------------------------- scheduling
class _Pool:
    """The scheduling, fault handling and ledger that every pool shares."""

    mode: str

    def __init__(self, workers: list[_Worker], name: str, timeout: float | None) -> None:
        self._workers = workers
        self.timeout = timeout
        self.name = name
        self.__name__ = name
        self._requests = 0
        self._lock = threading.Lock()  # one request at a time: each worker runs one share at a time
        self._closed = False

    def __call__(self, x: Any, *rest: Any) -> Any:
        """Evaluate the batch ``x`` (and the shared ``rest``, e.g. θ) across the workers, in order."""
        if self._closed:
            raise PoolError(f"{self.name} is closed; make a new pool")
        if isinstance(x, Tensor) and self.mode != "threads":
            x = x.detach()  # leaves another process by value; a graph cannot follow it
            rest = tuple(r.detach() if isinstance(r, Tensor) else r for r in rest)
        rows = len(x)
        with self._lock:
            self._requests += 1
            for worker in self._workers:
                if not worker.ledger.alive:
                    self._restart(worker)
            outputs = self._run(x, rest, rows)
        pieces = [outputs[start] for start in sorted(outputs)]
        if len(pieces) == 1:
            return pieces[0]
        if all(isinstance(p, Tensor) for p in pieces):
            return torch.cat(pieces)
        return np.concatenate([np.asarray(p) for p in pieces])

    def status(self) -> PoolStatus:
        """The pool's ledger: per worker samples, calls, failures, seconds, restarts, last error."""
        return PoolStatus(self.name, self._requests, [_copy(w.ledger) for w in self._workers])

    def worker_attribute(self, name: str) -> list[Any]:
        """The attribute ``name`` of every worker's device (e.g. its own evaluation counter), in worker order.

        ``None`` for a worker whose process or actor is dead (its device went with it).
        """
        with self._lock:  # not between a share and its answer on a worker process's pipe
            return [worker.attribute(name) if worker.ledger.alive else None for worker in self._workers]

    def close(self) -> None:
        """Stop the workers (processes, actors); the pool cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            for worker in self._workers:
                worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._workers)

    def __repr__(self) -> str:
        return self.name

    # ---------------------------------------------------------- internal
    def _wait(self, shares: list[Any], timeout: float | None) -> list[Any]:
        """The shares among ``shares`` that have finished, waiting up to ``timeout`` s (None: for ever) for one."""
        done, _ = futures.wait(shares, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        return list(done)

    def _restart(self, worker: _Worker) -> None:
        try:
            worker.restart()
        except Exception as err:  # it stays dead for this request; the others carry on
            worker.ledger.last_error = _describe(err)
            return
        worker.ledger.alive = True
        worker.ledger.restarts += 1

    def _run(self, x: Any, rest: tuple[Any, ...], rows: int) -> dict[int, Any]:
        """Evaluate every row of ``x`` once; returns the outputs keyed by the share's first row."""
        available = [w for w in self._workers if w.ledger.alive and w.ready()]
        pending = collections.deque(_split(0, rows, max(len(available), 1)))
        idle = collections.deque(available)
        failed: list[tuple[_Worker, str]] = []  # the workers out of this request, and why
        running: dict[futures.Future, tuple[_Worker, int, int, float]] = {}  # ... and its deadline
        outputs: dict[int, Any] = {}

        def fail(worker: _Worker, start: int, stop: int, why: str, dead: bool, death: str = "died") -> None:
            ledger = worker.ledger
            ledger.failures += 1
            ledger.failed_samples += stop - start
            if dead:
                ledger.alive = False
                why = f"{death} ({why})"
            ledger.last_error = why
            failed.append((worker, why))
            # the share goes, split, to the workers still in this request: idle or still running
            pending.extend(_split(start, stop, max(len(idle) + len(running), 1)))

        try:
            while pending or running:
                while pending and idle:
                    start, stop = pending.popleft()
                    worker = idle.popleft()
                    worker.ledger.calls += 1
                    share = x[start:stop]
                    try:
                        future = worker.submit((share,) + rest)
                    except Exception as err:  # e.g. an input that cannot be pickled: the same on every worker
                        future = futures.Future()
                        future.set_exception(err)
                    deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout
                    running[future] = (worker, start, stop, deadline)
                if not running:
                    lost = sum(stop - start for start, stop in pending)
                    reasons = dict((w.ledger.worker, why) for w, why in failed)
                    for w in self._workers:
                        if w not in available and not w.ledger.alive:
                            reasons[w.ledger.worker] = f"dead and could not be restarted ({w.ledger.last_error})"
                        elif w not in available:
                            reasons[w.ledger.worker] = "still in a call abandoned after the timeout"
                    raise PoolError(
                        f"{self.name}: every worker failed on this request, so {lost} of {rows} samples could not be "
                        "evaluated and nothing of it is returned; "
                        + "; ".join(f"{worker}: {why}" for worker, why in reasons.items())
                        + ". The errors are the devices' own, or the worker died (see pool.status())"
                    )
                first_deadline = min(deadline for *_, deadline in running.values())
                wait = None if first_deadline == math.inf else max(first_deadline - time.monotonic(), 0.0)
                done = self._wait(list(running), wait)
                for future in done:
                    worker, start, stop, _ = running[future]  # still out until its answer is read whole
                    try:
                        output, seconds = future.result()
                        output = _checked(output, stop - start)
                    except Exception as err:
                        del running[future]
                        fail(worker, start, stop, _describe(err), worker.died(err))
                        continue
                    del running[future]
                    worker.ledger.samples += stop - start
                    worker.ledger.seconds += seconds
                    outputs[start] = output
                    idle.append(worker)
                now = time.monotonic()
                for future in [f for f, (*_, deadline) in running.items() if deadline <= now]:
                    worker, start, stop, _ = running.pop(future)
                    # its late answer, if any, is never used: the share is evaluated elsewhere
                    why = f"no answer within the timeout of {self.timeout:g} s"
                    fail(worker, start, stop, why, worker.abandon(future), death="killed")
        except BaseException:  # interrupted (Ctrl-C): the shares still out must not answer a later request
            for future, (worker, *_) in running.items():
                if worker.drop(future):
                    worker.ledger.alive = False
            raise
        return outputs


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` in ``parts`` contiguous shares whose sizes differ by at most one (no empty shares)."""
    n = stop - start
    if n == 0:
        return [(start, stop)]  # an empty batch still goes to one worker, whose device answers its shape
    parts = min(parts, n)
    bounds = [start + (n * i) // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _checked(output: Any, rows: int) -> Any:
    if isinstance(output, Tensor):
        got = output.shape[0] if output.dim() > 0 else None
    else:
        shape = np.shape(output)
        got = shape[0] if shape else None
    if got != rows:
        raise ValueError(f"returned {got if got is not None else 'a scalar'} rows for a share of {rows} samples")
    return output


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


def _copy(ledger: WorkerLedger) -> WorkerLedger:
    return WorkerLedger(**vars(ledger))


def _device_name(device: Any) -> str:
    if isinstance(device, functools.partial):  # a factory: name what it builds
        device = device.func
    return getattr(device, "name", None) or getattr(device, "__name__", None) or type(device).__name__


# ---------------------------------------------------------------- the pools
class DevicePool(_Pool):
    """Several identical devices, or simulator instances, seen as one device.

    Args:
        devices: the devices, one per worker; each called as ``device(x)`` or
            ``device(x, theta)`` on its share of a batch, one share at a
            time.  The same object may appear more than once only if it is
            safe to call from several threads at once.  With
            ``mode="processes"`` each is pickled into its worker process.
        mode: ``"threads"`` — every worker is a thread of this process: for
            devices that wait (instruments, remote devices, sleeps) or release
            the GIL; ``"processes"`` — every worker is its own process, which
            builds or receives its device once: for CPU-bound Python
            simulators.
        factory: instead of ``devices``, a function of no arguments that
            builds one device; called ``workers`` times (in each worker
            process with ``mode="processes"``, so the device never has to be
            pickled — only the factory, which must therefore be importable:
            a module-level function or class, or a ``functools.partial`` of
            one).
        workers: the number of workers built with ``factory``.
        name: how errors, reports and ``BlackBox`` name the pool.
        start_method: how processes start (``"forkserver"``, ``"spawn"`` or
            ``"fork"``).  The default, ``"forkserver"`` where the platform
            has it (else ``"spawn"``), is safe with threads and torch and
            imports torch once for all workers; ``"fork"`` is not safe in a
            process whose torch has started its threads.
        start_timeout: seconds a worker process may take to start and build
            its device before the pool gives up with an error.
        timeout: seconds a share may take (None: no limit).  A share not back
            in time is a failed share, evaluated elsewhere; its worker process
            is killed (and started afresh at the next request), while a thread
            — which cannot be stopped — sits out the requests until its call
            returns, and what it returns is dropped.

    ``pool(x, *rest)`` splits ``x`` along its first dimension into one
    contiguous share per worker, evaluates the shares at once and returns the
    outputs concatenated in order (a tensor if every worker returned one, a
    numpy array otherwise); ``rest`` (θ) goes to every worker whole.  With
    processes, tensors are detached on the way (no autograd graph crosses a
    process), so :class:`~blackgrad.estimators.Exact` needs ``mode="threads"``.
    Faults: see the module docstring; read the ledger with :meth:`status`.
    Close the pool (or use it as a context manager) to stop its processes.

    Example::

        pool = DevicePool(factory=make_simulator, workers=8, mode="processes")
        layer = BlackBox(pool, SPSA(directions=4))   # each batch: 8 shares at once
        print(pool.status())                         # per-worker samples, calls, failures
    """

    def __init__(
        self,
        devices: Sequence[Callable[..., Any]] | None = None,
        mode: str = "threads",
        *,
        factory: Callable[[], Callable[..., Any]] | None = None,
        workers: int | None = None,
        name: str | None = None,
        start_method: str | None = None,
        start_timeout: float = 120.0,
        timeout: float | None = None,
    ) -> None:
        _check_timeout(timeout)
        if mode not in ("threads", "processes"):
            raise ValueError(f"DevicePool mode must be 'threads' or 'processes', got {mode!r}; for Ray actors use RayPool")
        if (devices is None) == (factory is None):
            raise TypeError("DevicePool needs either devices=[...] (one per worker) or factory=... with workers=k, not both")
        if factory is not None:
            if not callable(factory):
                raise TypeError(f"factory must be callable (it builds one device), got {type(factory).__name__}")
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
                raise ValueError(f"DevicePool(factory=...) needs workers, a positive int; got {workers!r}")
        else:
            if workers is not None:
                raise TypeError("workers goes with factory=...; with devices=[...] there is one worker per device")
            if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence) or callable(devices):
                raise TypeError(
                    f"devices must be a list of devices, one per worker, got {type(devices).__name__}; "
                    "for k copies of one simulator use factory=make_device, workers=k"
                )
            if len(devices) == 0:
                raise ValueError("DevicePool needs at least one device")
            for i, device in enumerate(devices):
                if not callable(device):
                    raise TypeError(f"devices[{i}] is not callable: got {type(device).__name__}")
        self.mode = mode
        count = workers if factory is not None else len(devices)
        shown = _device_name(factory if factory is not None else devices[0])
        name = name or f"DevicePool({shown} x {count}, {mode})"
        if mode == "threads":
            built = [factory() for _ in range(count)] if factory is not None else list(devices)
            self._executor = futures.ThreadPoolExecutor(max_workers=count, thread_name_prefix="blackgrad-pool")
            pool_workers: list[_Worker] = [_ThreadWorker(f"thread {i}", d, self._executor) for i, d in enumerate(built)]
        else:
            blobs = []
            for i in range(count):
                item = ("factory", factory) if factory is not None else ("device", devices[i])
                try:
                    blobs.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
                except Exception as err:
                    what = "factory" if factory is not None else f"devices[{i}]"
                    raise TypeError(
                        f"DevicePool(mode='processes'): {what} cannot be sent to a worker process "
                        f"({type(err).__name__}: {err}); give factory= a module-level function that builds "
                        "the device in the worker (a lambda or a local function cannot be pickled)"
                    ) from err
            if start_method is None:
                start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(start_method)
            if start_method == "forkserver":
                # the server imports torch and blackgrad once; every worker is a fork of it
                context.set_forkserver_preload(["blackgrad.pool"])
            pool_workers = []
            try:
                for i, blob in enumerate(blobs):
                    pool_workers.append(_ProcessWorker(f"process {i}", blob, context, start_timeout))
                for worker in pool_workers:
                    worker.wait_started()
            except BaseException:
                for worker in pool_workers:
                    worker.close()
                raise
            self._executor = None
        super().__init__(pool_workers, name, timeout)

    def _wait(self, shares: list[Any], timeout: float | None) -> list[Any]:
        if self.mode == "threads":
            return super()._wait(shares, timeout)
        # a share that failed before it reached its process is finished: report it at once
        finished = [share for share in shares if not isinstance(share, _ProcessShare) or share.error is not None]
        if finished:
            return finished
        # one wait on every pipe and every process's sentinel: an answer, or a process that ended
        by_handle = {}
        for share in shares:
            by_handle[share.conn] = by_handle[share.sentinel] = share
        ready = mp_connection.wait(list(by_handle), timeout)
        return list(dict.fromkeys(by_handle[handle] for handle in ready))

    def close(self) -> None:
        super().close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class _RayWorker(_Worker):
    """One Ray actor; with a channel (``transport="zmq"``) its shares travel over ZeroMQ, not Ray's task path."""

    def __init__(
        self, label: str, ray: Any, actor_class: Any, factory: Any, options: dict, start_timeout: float,
        channel: "_Channel | None" = None,
    ) -> None:
        super().__init__(label)
        self.ray, self.actor_class, self.factory = ray, actor_class, factory
        self.options, self.start_timeout, self.channel = options, start_timeout, channel
        self.socket: Any = None  # the driver's end of the actor's channel, once started
        self.serve_ref: Any = None  # the actor's serving loop, a Ray call that ends (with an error) when the actor dies
        self.seq = 0  # the number of the latest message sent on the channel; answers to older ones are dropped
        self.waiting: "_ChannelShare | None" = None  # the message whose answer is awaited
        self.gone = False  # its serving call was seen ended at the start of a request
        self.actor = self.actor_class.options(**self.options).remote(self.factory)

    def wait_started(self) -> None:
        try:
            if self.channel is None:
                self.ray.get(self.actor.ping.remote(), timeout=self.start_timeout)
            else:
                self._open_channel()
        except Exception as err:
            self.close()
            hint = ""
            if isinstance(err, self.ray.exceptions.GetTimeoutError):
                free = self.ray.available_resources().get("CPU", 0)
                hint = (
                    f" (each actor asks for {self.options or {'num_cpus': 1}} and the cluster has {free:g} CPUs free: "
                    "use fewer workers or ask for less per actor, e.g. actor_options={'num_cpus': 0.25} for devices "
                    "that wait rather than compute)"
                )
            if hint:
                when = f"within {self.start_timeout:g} s"
            elif isinstance(err, _ChannelUnreachable):
                when = "(its ZeroMQ channel did not answer; transport='ray' sends the shares through Ray instead)"
            else:
                when = "(its device's factory failed where the actor runs)"
            raise PoolError(f"{self.ledger.worker} did not start {when}: {_describe(err)}{hint}") from err

    def _open_channel(self) -> None:
        """The actor binds its socket (on loopback when it runs on this node) and serves; this end connects and pings it."""
        channel = self.channel
        started = time.monotonic()
        address = self.ray.get(self.actor.open.remote(channel.key, channel.node_ip), timeout=self.start_timeout)
        self.serve_ref = self.actor.serve.remote()
        self.socket = channel.context.socket(channel.zmq.DEALER)
        self.socket.setsockopt(channel.zmq.LINGER, 0)
        self.socket.connect(address)
        self.address = address
        # the actor is up and serving: only the network is left to wait for
        left = min(max(self.start_timeout - (time.monotonic() - started), 1.0), _CHANNEL_TIMEOUT)
        try:
            self.request(_PING, b"", timeout=left)
        except TimeoutError as err:
            raise _ChannelUnreachable(f"no answer from {address} within {left:.3g} s") from err

    def send(self, tag: bytes, body: bytes) -> "_ChannelShare":
        self.seq += 1
        head = tag + _SEQ.pack(self.seq)
        share = _ChannelShare(self, head)
        self.waiting = share
        self.socket.send_multipart([head, _sign(self.channel.key, head, body), body], copy=False)
        return share

    def collect(self) -> None:
        """Read every message that has arrived; the answer to the awaited one is kept, any other dropped."""
        zmq = self.channel.zmq
        for _ in range(1000):  # a bounded number; a flood cannot hold the pool here
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3:
                continue
            head, mac, body = frames
            if not hmac.compare_digest(mac, _sign(self.channel.key, head, body)):
                continue  # not from the actor: never unpickled
            share = self.waiting
            if share is not None and head == share.head:
                share.reply, self.waiting = body, None

    def check_alive(self, share: "_ChannelShare") -> None:
        """If the actor has died (its serving call ended), mark ``share`` failed with why."""
        ready, _ = self.ray.wait([self.serve_ref], timeout=0, fetch_local=False)
        if ready:
            share.error = self._death()

    def _death(self) -> BaseException:
        try:
            self.ray.get(self.serve_ref, timeout=5)
        except self.ray.exceptions.RayActorError as err:
            return err
        except Exception as err:
            return _ChannelClosed(f"its serving loop failed ({_describe(err)})")
        return _ChannelClosed("its serving loop ended")

    def request(self, tag: bytes, body: bytes, timeout: float | None = None) -> Any:
        """Send one message and wait for its answer (TimeoutError after ``timeout`` s); the answer's value."""
        share = self.send(tag, body)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        for _ in range(_bounded(timeout)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.socket.poll(int(min(left, _DEATH_CHECK) * 1000) + 1):
                self.collect()
            if share.reply is None and share.error is None:
                self.check_alive(share)
            if share.reply is not None or share.error is not None:
                return share.value()
        self.waiting = None
        raise TimeoutError(f"no answer within {timeout:g} s")

    def submit(self, args: tuple[Any, ...]) -> Any:
        body = _dumps(tuple(_pack(a) for a in args))
        if self.channel is not None:
            if self.gone:  # dead already (a process may serve on for a moment after Ray has called it dead)
                share = _ChannelShare(self, b"")
                share.error = self._death()
                return share
            return self.send(_EVALUATE, body)
        return _RayShare(self.ray, self.actor.evaluate.remote(body))

    def died(self, err: BaseException) -> bool:
        return isinstance(err, (self.ray.exceptions.RayActorError, _ChannelClosed))

    def abandon(self, future: futures.Future) -> bool:
        self.close()
        return True

    def drop(self, future: Any) -> bool:
        # its answer goes to an object ref nobody reads, or comes on the channel under an old number and is
        # dropped; the actor's next share waits behind it
        self.waiting = None
        return False

    def restart(self) -> None:
        self.close()
        self.seq, self.waiting, self.serve_ref, self.gone = 0, None, None, False
        self.actor = self.actor_class.options(**self.options).remote(self.factory)
        self.wait_started()

    def attribute(self, name: str) -> Any:
        if self.channel is not None:
            return self.request(_ATTRIBUTE, pickle.dumps(name, protocol=pickle.HIGHEST_PROTOCOL))
        return self.ray.get(self.actor.attribute.remote(name))

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        try:
            self.ray.kill(self.actor)
        except Exception:  # Ray already shut down: the actor went with it
            pass


# A Ray actor's channel (transport="zmq").  A message either way is three
# ZeroMQ frames: a head (one tag byte — _EVALUATE, _ATTRIBUTE, _PING, _QUIT —
# and the message's number), an HMAC-SHA256 of head and body under the pool's
# random key, and the body: a pickle of the packed arguments or attribute
# name; the answer, a pickle of (True, value) or (False, exception), comes
# back under the same head.  Each side checks the MAC (hmac.compare_digest)
# before it unpickles anything: whoever lacks the key cannot drive the device
# or feed the pool an answer.  The bodies are signed, not encrypted.
_PING = b"P"
_SEQ = struct.Struct(">Q")
#: the longest (s) a pool waits for a started actor's channel to answer its first message
_CHANNEL_TIMEOUT = 30.0
#: how often (s) a pool waiting on its channels without an answer asks Ray whether an actor has died
_DEATH_CHECK = 0.05


def _sign(key: bytes, head: bytes, body: Any) -> bytes:
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(body)
    return mac.digest()


def _bounded(timeout: float | None) -> int:
    """Enough slices of :data:`_DEATH_CHECK` for ``timeout`` (a day when there is none)."""
    return int((86400.0 if timeout is None else timeout) / _DEATH_CHECK) + 10


class _ChannelClosed(RuntimeError):
    """A Ray actor's serving loop ended while the pool needed it: the actor is as good as dead."""


class _ChannelUnreachable(RuntimeError):
    """A Ray actor's channel did not answer the pool's first message."""


class _Channel:
    """What a pool's channels share: the ZeroMQ context, the pool's key, and this node's IP."""

    def __init__(self, ray: Any) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.context.setsockopt(zmq.LINGER, 0)
        self.key = secrets.token_bytes(32)
        self.node_ip = ray.util.get_node_ip_address()

    def close(self) -> None:
        self.context.destroy(linger=0)  # closes any socket still open (none should be), then ends the context


class _ChannelShare:
    """A message in flight on a Ray actor's channel: finished when its answer has come or the actor has died."""

    __slots__ = ("worker", "head", "reply", "error")

    def __init__(self, worker: _RayWorker, head: bytes) -> None:
        self.worker, self.head = worker, head
        self.reply: bytes | None = None
        self.error: BaseException | None = None

    def finished(self) -> bool:
        return self.reply is not None or self.error is not None

    def done(self) -> bool:
        if not self.finished() and self.worker.socket is not None:
            self.worker.collect()
        return self.finished()

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return _raise_reply(self.reply)

    def result(self) -> tuple[Any, float]:
        return _received(self.value())


def _serve_channel(socket: Any, zmq: Any, key: bytes, device: Any) -> None:
    """In the actor: answer the pool's messages on ``socket`` (a ROUTER) until it says quit.

    A message without the pool's MAC is dropped unread and unanswered, and so
    is one whose number is not above the last one answered: a signed message
    captured on the network and sent again is not evaluated twice.
    """
    last = 0  # the number of the last message answered; the pool numbers its messages 1, 2, ...
    while True:  # ends with _QUIT, or with the actor (killed by the pool, or its driver gone)
        if not socket.poll(1000):
            continue
        frames = socket.recv_multipart()
        if len(frames) != 4 or len(frames[1]) != 1 + _SEQ.size:
            continue
        peer, head, mac, body = frames
        if not hmac.compare_digest(mac, _sign(key, head, body)):
            continue
        number = _SEQ.unpack(head[1:])[0]
        if number <= last:
            continue  # a replay (or a copy delayed past newer messages)
        last = number
        tag = head[:1]
        try:
            if tag == _EVALUATE:
                value = _timed_remote_call(device, pickle.loads(body))
            elif tag == _ATTRIBUTE:
                value = getattr(device, pickle.loads(body))
            else:
                value = os.getpid()
            reply = _dumps((True, value))
        except Exception as err:
            reply = _error_reply(err)
        socket.send_multipart([peer, head, _sign(key, head, reply), reply])
        if tag == _QUIT:
            return


def _dumps(value: Any) -> bytes:
    """``value`` as one pickle for a Ray actor or from one (tensors already packed as arrays).

    A share travels as one bytes object, both ways: Ray moves bytes with less
    work per call than the arrays inside them (its own serialisation of an
    array adds metadata and buffer bookkeeping each way).  Plain pickle first
    (fast, in C); cloudpickle for what it cannot take (a lambda among the
    arguments, say), as Ray itself would have used.
    """
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle

        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class _RayShare:
    """A share in flight on a Ray actor: its object ref, waited on with ``ray.wait``.

    Waiting on the refs themselves (one ``ray.wait`` in the pool's thread)
    rather than on ``ref.future()`` saves, per share, a callback from Ray's
    thread and a hand-over between threads.
    """

    __slots__ = ("ray", "ref")

    def __init__(self, ray: Any, ref: Any) -> None:
        self.ray, self.ref = ray, ref

    def done(self) -> bool:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        return bool(ready)

    def result(self) -> tuple[Any, float]:
        return _received(pickle.loads(self.ray.get(self.ref)))


_RAY_ACTOR_CLASS = None


def _ray_actor_class(ray: Any) -> Any:
    global _RAY_ACTOR_CLASS
    if _RAY_ACTOR_CLASS is None:

        class DeviceWorker:
            """A Ray actor holding one device, built by the factory where the actor runs."""

            def __init__(self, factory: Callable[[], Any]) -> None:
                self.device = factory()

            def ping(self) -> int:
                return os.getpid()

            def evaluate(self, payload: bytes) -> bytes:
                return _dumps(_timed_remote_call(self.device, pickle.loads(payload)))

            def attribute(self, name: str) -> Any:
                return getattr(self.device, name)

            def open(self, key: bytes, pool_ip: str) -> str:
                """Bind the channel's socket, on loopback when the pool runs on this node; its address."""
                import ray
                import zmq

                self.key, self.zmq = key, zmq
                self.socket = zmq.Context.instance().socket(zmq.ROUTER)
                self.socket.setsockopt(zmq.LINGER, 0)
                node_ip = ray.util.get_node_ip_address()
                host = "127.0.0.1" if node_ip == pool_ip else node_ip
                if ":" in host:  # IPv6
                    self.socket.setsockopt(zmq.IPV6, 1)
                    host = f"[{host}]"
                port = self.socket.bind_to_random_port(f"tcp://{host}")
                return f"tcp://{host}:{port}"

            def serve(self) -> None:
                """The pool's shares, over the channel; a call that lasts as long as the actor."""
                try:
                    _serve_channel(self.socket, self.zmq, self.key, self.device)
                finally:
                    self.socket.close(linger=0)

        _RAY_ACTOR_CLASS = ray.remote(DeviceWorker)
    return _RAY_ACTOR_CLASS


class RayPool(_Pool):
    """A device pool on Ray actors: one device per actor, built where the actor runs.

    Args:
        factory: a function of no arguments that builds one device; Ray
            sends it to each actor (cloudpickle: a lambda or a closure will
            do) and the actor calls it once.
        workers: the number of actors.
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``,
            …) when Ray is not initialised yet; ``None`` starts a local Ray
            (give ``ray.init(num_cpus=...)`` yourself first to size it).  A
            Ray this pool started is shut down by :meth:`close`.
        actor_options: what each actor asks of the cluster, given to
            ``.options()`` (default: Ray's, one CPU each); devices that wait
            rather than compute can share a CPU: ``{"num_cpus": 0.25}``.
        name: how errors, reports and ``BlackBox`` name the pool.
        start_timeout: seconds each actor may take to start (including
            waiting for resources) before the pool gives up with an error.
        timeout: seconds a share may take (None: no limit); an actor that
            does not answer in time is killed, its share evaluated elsewhere,
            and a new actor replaces it at the next request.
        transport: how shares travel to the actors and back.  ``"zmq"``:
            Ray places and watches the actors, but each actor, once started,
            binds a ZeroMQ socket (on loopback if it runs on the pool's node,
            else on its node's IP, a random port) and the shares go over it —
            far less per share than a Ray call (pyzmq, in the ``blackgrad[ray]``
            extra; every message is signed with a random key of the pool's,
            checked before anything is unpickled, so nobody else on the
            network can drive the devices, and numbered, so that a captured
            message sent again is not evaluated; the data is not encrypted).
            ``"ray"``: every share is a Ray actor call.  ``"auto"`` (the
            default): ``"zmq"`` if pyzmq is installed and the pool is not on a
            Ray Client (``ray://``) connection, whose driver usually cannot
            reach the nodes' ports; else ``"ray"``.

    Evaluation, faults and the ledger are as for :class:`DevicePool`; an
    actor that dies (``ray.kill``, a crashed node) has its share retried on
    the others, and a new actor replaces it at the next request.  With
    ``"zmq"`` each actor keeps one Ray call running (its serving loop) whose
    end tells the pool the actor died; the pool asks Ray about it whenever
    it has waited 0.05 s for its channels without an answer.
    """

    mode = "ray"

    def __init__(
        self,
        factory: Callable[[], Callable[..., Any]],
        workers: int,
        address: str | None = None,
        *,
        actor_options: dict[str, Any] | None = None,
        name: str | None = None,
        start_timeout: float = 120.0,
        timeout: float | None = None,
        transport: str = "auto",
    ) -> None:
        _check_timeout(timeout)
        if transport not in ("auto", "zmq", "ray"):
            raise ValueError(f"RayPool transport must be 'auto', 'zmq' or 'ray', got {transport!r}")
        try:
            import ray
        except ImportError as err:
            raise ImportError("RayPool needs Ray: pip install 'blackgrad[ray]'") from err
        if not callable(factory):
            raise TypeError(f"RayPool factory must be callable (it builds one device), got {type(factory).__name__}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"RayPool needs workers, a positive int; got {workers!r}")
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        actor_class = _ray_actor_class(ray)
        options = dict(actor_options or {})
        pool_workers: list[_Worker] = []
        self._channel: _Channel | None = None
        try:
            self.transport = _ray_transport(ray, transport)
            if self.transport == "zmq":
                self._channel = _Channel(ray)
            for i in range(workers):
                pool_workers.append(
                    _RayWorker(f"ray actor {i}", ray, actor_class, factory, options, start_timeout, self._channel)
                )
            for worker in pool_workers:
                worker.wait_started()
        except BaseException:
            for worker in pool_workers:
                worker.close()
            if self._channel is not None:
                self._channel.close()
            if self._owns_ray:
                ray.shutdown()
            raise
        super().__init__(pool_workers, name or f"RayPool({_device_name(factory)} x {workers})", timeout)

    def _wait(self, shares: list[Any], timeout: float | None) -> list[Any]:
        if self._channel is not None:
            return self._wait_channels(shares, timeout)
        # a share that failed before it reached Ray is a finished future: report it at once
        finished = [share for share in shares if not isinstance(share, _RayShare)]
        if finished:
            return finished
        by_ref = {share.ref: share for share in shares}
        ready, _ = self._ray.wait(list(by_ref), num_returns=1, timeout=timeout, fetch_local=True)
        return [by_ref[ref] for ref in ready]

    def _run(self, x: Any, rest: tuple[Any, ...], rows: int) -> dict[int, Any]:
        if self._channel is not None:  # one question to Ray per request: which actors have died since the last
            watched = {w.serve_ref: w for w in self._workers if w.ledger.alive and w.serve_ref is not None}
            if watched:
                ready, _ = self._ray.wait(list(watched), num_returns=len(watched), timeout=0, fetch_local=False)
                for ref in ready:
                    watched[ref].gone = True
        return super()._run(x, rest, rows)

    def _wait_channels(self, shares: list[Any], timeout: float | None) -> list[Any]:
        """One ``zmq.Poller`` on every channel with a share out; between answers, ask Ray which actors died."""
        finished = [share for share in shares if not isinstance(share, _ChannelShare) or share.finished()]
        if finished:
            return finished
        zmq = self._channel.zmq
        poller = zmq.Poller()
        by_socket = {}
        for share in shares:
            by_socket[share.worker.socket] = share.worker
            poller.register(share.worker.socket, zmq.POLLIN)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        for _ in range(_bounded(timeout)):
            left = deadline - time.monotonic()
            for socket, _ in poller.poll(int(max(min(left, _DEATH_CHECK), 0.0) * 1000)):
                by_socket[socket].collect()
            finished = [share for share in shares if share.finished()]
            if finished:
                return finished
            # no answer in this slice: has an actor died?  (its serving call has ended)
            by_ref = {share.worker.serve_ref: share for share in shares}
            ready, _ = self._ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0, fetch_local=False)
            for ref in ready:
                by_ref[ref].error = by_ref[ref].worker._death()
            if ready:
                return [by_ref[ref] for ref in ready]
            if time.monotonic() >= deadline:
                break
        return []

    @property
    def actors(self) -> list[Any]:
        """The actor handles, in worker order (e.g. to inspect or kill one)."""
        return [worker.actor for worker in self._workers]

    def close(self) -> None:
        closed = self._closed
        super().close()
        if not closed and self._channel is not None:
            self._channel.close()
        if not closed and self._owns_ray:
            self._ray.shutdown()


def _ray_transport(ray: Any, transport: str) -> str:
    if transport != "auto":
        if transport == "zmq":
            try:
                import zmq  # noqa: F401
            except ImportError as err:
                raise ImportError("RayPool(transport='zmq') needs pyzmq: pip install 'blackgrad[ray]'") from err
        return transport
    try:
        import zmq  # noqa: F401
    except ImportError:
        return "ray"
    try:
        from ray.util.client import ray as client

        if client.is_connected():  # a Ray Client: the driver is off the cluster's network
            return "ray"
    except (ImportError, AttributeError):
        pass
    return "zmq"
