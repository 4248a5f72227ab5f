"""A device served over the network: wire format, server, RemoteDevice, faults, and training through it.

Every server here is a ``blackgrad serve`` subprocess on 127.0.0.1 on a free
port, started with a bounded wait and always stopped; the devices it serves
are in tests/remote_devices.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zmq  # the remote extra, which `make test` installs: missing, these tests fail rather than skip

import blackgrad as bg  # noqa: E402
from blackgrad.estimators import SPSA, FiniteDifference  # noqa: E402
from blackgrad.remote import (  # noqa: E402
    ProtocolError,
    RemoteDevice,
    RemoteDeviceError,
    RemoteRefused,
    RemoteUnavailable,
)
from blackgrad.remote.protocol import VERSION, encode, parse_arrays, parse_header, wire_array  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
import remote_devices  # noqa: E402

TOKEN = "test-token-0123456789"
STARTUP_SECONDS = 60  # importing torch in a fresh process takes seconds on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """This environment with tests/ on PYTHONPATH (entries made absolute: the server may run elsewhere)."""
    env = os.environ.copy()
    env.pop("BLACKGRAD_TOKEN", None)  # each server here is given its token, or generates one
    paths = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *paths])
    return env


class Served:
    """A ``blackgrad serve`` subprocess; ``address`` and ``token`` once it has said it listens."""

    def __init__(self, factory: str, *args: str, port: int = 0, token: str | None = TOKEN, options=(), cwd=ROOT):
        command = [sys.executable, "-m", "blackgrad.cli", "serve", factory, *args, "--port", str(port), *options]
        if token is not None:
            command += ["--token", token]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # device tracebacks land here; a pipe nobody reads would fill
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=subprocess_env(), cwd=cwd
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not any(line.startswith("token:") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.stderr.seek(0)
                raise RuntimeError(f"server did not start: {self.lines} {self.stderr.read()[-2000:]}")
            time.sleep(0.05)
        self.address = re.search(r"at (tcp://\S+)", self.lines[0]).group(1)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.token = token if token is not None else next(l for l in self.lines if l.startswith("token:")).split()[1]

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def kill(self) -> None:
        """SIGKILL: the server dies without a word, as a power cut would end it."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.stderr.close()


@pytest.fixture(scope="module")
def server():
    served = Served("remote_devices:make_tanh")
    yield served
    served.stop()


@pytest.fixture
def serve_process():
    """Starts servers for one test, and stops every one of them afterwards."""
    started: list[Served] = []

    def start(*args, **kwargs) -> Served:
        started.append(Served(*args, **kwargs))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def raw_request(address: str, frames: list[bytes], timeout: float = 10.0) -> tuple[dict, list[bytes]]:
    """Send frames as they are (no client library) and return the reply's header and array frames."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    try:
        s.send_multipart(frames)
        assert s.poll(int(timeout * 1000)), "no reply"
        reply = s.recv_multipart()
    finally:
        s.close()
    return json.loads(reply[0]), reply[1:]


def header(**fields) -> bytes:
    return json.dumps({"v": VERSION, "token": TOKEN, "client": "raw", "id": 1, "op": "eval", **fields}).encode()


def server_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in ("samples", "calls", "errors", "refusals", "malformed", "replayed")}


# ---------------------------------------------------------------- wire format
@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.linspace(0, 1, 6).reshape(2, 3, 1),
        (np.arange(4) + 1j * np.arange(4)).astype(np.complex64).reshape(2, 2),
        np.arange(6, dtype=np.int16).reshape(6),
        np.array([[True, False]]),
        np.zeros((0, 16), dtype=np.float16),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # not C-contiguous
    ],
)
def test_arrays_travel_as_raw_bytes_with_dtype_and_shape(array):
    frames = encode({"op": "eval"}, [array])
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == array.nbytes  # raw bytes, not text
    head = parse_header(bytes(frames[0]))
    (back,) = parse_arrays(head, [bytes(frames[1])])
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert back.flags.writeable  # a device may edit its input in place


def test_tensors_travel_and_what_cannot_travel_is_refused():
    t = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert np.array_equal(wire_array(t, "x"), t.detach().numpy())
    with pytest.raises(TypeError, match="bfloat16, which has no wire format; cast it to float32"):
        wire_array(torch.ones(2, 2, dtype=torch.bfloat16), "the input x")
    with pytest.raises(TypeError, match="dtype object, which cannot travel"):
        wire_array(np.array([{}, None], dtype=object), "the device's output")
    with pytest.raises(TypeError, match=r"dtype <U3, which cannot travel"):
        wire_array("abc", "the device's output")


@pytest.mark.parametrize(
    "frames, message",
    [
        ([b"\x80\x03pickle"], "not a UTF-8 JSON header"),
        ([b"[1, 2]"], "must be a JSON object"),
        ([json.dumps({"v": 99}).encode()], "protocol version 99, this side speaks version 1"),
        ([header(arrays=[{"dtype": "<f4", "shape": [2]}])], "describes 1 arrays but 0 array frames came"),
        ([header(arrays=[{"dtype": "|O", "shape": [1]}]), b"\0" * 8], "dtype object is not allowed"),
        ([header(arrays=[{"dtype": [("a", "<f4")], "shape": [1]}]), b"\0" * 4], "is not allowed|not a numpy dtype"),
        ([header(arrays=[{"dtype": "<f4", "shape": [2, 3]}]), b"\0" * 20], "needs 24 bytes, its frame has 20"),
        ([header(arrays=[{"dtype": "<f4", "shape": [-1]}]), b""], "is not a list of at most 32 non-negative ints"),
    ],
)
def test_malformed_messages_are_named(frames, message):
    with pytest.raises(ProtocolError, match=message):
        parse_arrays(parse_header(frames[0]), frames[1:])


def test_core_import_needs_no_zmq_and_remote_says_how_to_install_it():
    code = (
        "import sys; sys.modules['zmq'] = None\n"  # as if pyzmq were not installed
        "import blackgrad\n"
        "assert 'zmq' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n    import blackgrad.remote\nexcept ImportError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "blackgrad.remote needs pyzmq, which is not installed: pip install 'blackgrad[remote]'" in out.stdout


# --------------------------------------------------------- serving, ledgers
def test_remote_device_answers_like_the_local_one(server):
    device = RemoteDevice(server.address, token=TOKEN)
    before = device.status()
    x = torch.randn(5, 4)
    theta = torch.randn(12, dtype=torch.float64)
    assert torch.equal(device(x), remote_devices.tanh_device(x))
    y = device(x.double(), theta)
    assert y.dtype == torch.float64 and torch.equal(y, remote_devices.tanh_device(x.double(), theta))
    y = device(x.numpy(), theta.numpy())  # numpy in, numpy out
    assert isinstance(y, np.ndarray) and np.array_equal(y, remote_devices.tanh_device(x, theta.float()).numpy())
    assert device(torch.zeros(0, 4)).shape == (0, 3)
    after = device.status()
    assert server_delta(before, after) == dict(samples=15, calls=4, errors=0, refusals=0, malformed=0, replayed=0)
    assert (device.calls.samples, device.calls.calls, device.calls.errors) == (15, 4, 0)
    assert after["queue"] == 0 and after["device"] == "remote_devices:make_tanh"


def test_missing_or_wrong_token_is_refused_counted_and_nothing_evaluated(server):
    good = RemoteDevice(server.address, token=TOKEN)
    before = good.status()
    for token in (None, "wrong-token", TOKEN + "x"):
        with pytest.raises(RemoteRefused, match="refused the request: the request carried (no|a wrong) token; nothing was evaluated"):
            RemoteDevice(server.address, token=token)(torch.ones(2, 4))
    with pytest.raises(RemoteRefused, match="wrong token"):
        RemoteDevice(server.address, token="wrong-token").status()  # the ledger is not for strangers either
    after = good.status()
    assert server_delta(before, after) == dict(samples=0, calls=0, errors=0, refusals=4, malformed=0, replayed=0)


def test_malformed_messages_get_an_error_reply_and_the_server_keeps_serving(server):
    device = RemoteDevice(server.address, token=TOKEN)
    before = device.status()
    cases = [
        ([b"not json at all"], "not a UTF-8 JSON header"),
        ([header(op="dance")], "unknown op 'dance'"),
        ([header(client=None)], "'client' must be a string"),
        ([header(id="seven")], "'id' must be an integer"),
        ([header(arrays=[{"dtype": "|O", "shape": [1, 1]}]), b"\0" * 8], "dtype object is not allowed"),
        ([header(arrays=[{"dtype": "<f4", "shape": [2, 4]}]), b"\0" * 31], "needs 32 bytes, its frame has 31"),
        (
            [header(arrays=[{"dtype": "<f4", "shape": [2, 4]}, {"dtype": "<f4", "shape": [3, 4]}]), b"\0" * 32, b"\0" * 48],
            r"x \(B, ...\) and optionally a flat theta, got shapes \[\(2, 4\), \(3, 4\)\]",
        ),
    ]
    for frames, message in cases:
        reply, arrays = raw_request(server.address, frames)
        assert reply["ok"] is False and reply["error"] == "malformed" and re.search(message, reply["message"]), reply
        assert arrays == []
    x = torch.randn(3, 4)
    assert torch.equal(device(x), remote_devices.tanh_device(x))  # still serving
    after = device.status()
    assert server_delta(before, after) == dict(samples=3, calls=1, errors=0, refusals=0, malformed=len(cases), replayed=0)


def test_a_device_that_raises_reports_its_error_and_the_server_keeps_serving(server):
    device = RemoteDevice(server.address, token=TOKEN)
    before = device.status()
    bad = torch.full((2, 4), remote_devices.RAISE)
    with pytest.raises(RemoteDeviceError, match=r"raised ValueError: the lamp is off \(test fault\)"):
        device(bad)
    with pytest.raises(RemoteDeviceError, match="raised TypeError: the device's output is a str|cannot travel"):
        device(torch.full((2, 4), remote_devices.JUNK))
    x = torch.randn(2, 4)
    assert torch.equal(device(x), remote_devices.tanh_device(x))
    # inside a BlackBox the prober names the black box and the device's own message
    box = bg.BlackBox(device, FiniteDifference(), calibrate=False)
    with pytest.raises(bg.DeviceError, match=r"remote device at tcp://127\.0\.0\.1:\d+' raised RemoteDeviceError: .*lamp is off"):
        box(bad)
    after = device.status()
    assert server_delta(before, after) == dict(samples=2, calls=4, errors=3, refusals=0, malformed=0, replayed=0)
    assert (device.calls.samples, device.calls.calls, device.calls.errors) == (2, 4, 3)


def test_a_client_that_leaves_mid_request_does_not_stop_the_server(server):
    device = RemoteDevice(server.address, token=TOKEN)
    before = device.status()
    slow = np.full((1, 4), remote_devices.SLOW, dtype=np.float32)
    gone = zmq.Context.instance().socket(zmq.DEALER)
    gone.connect(server.address)
    gone.send_multipart(encode({"op": "eval", "token": TOKEN, "client": "gone", "id": 1}, [slow]))
    time.sleep(0.2)  # it has arrived and is being evaluated
    gone.close(linger=2000)  # the linger only makes sure the request went out, however busy the machine
    x = torch.randn(2, 4)
    assert torch.equal(device(x), remote_devices.tanh_device(x))  # answered after the orphan, whose reply was dropped
    after = device.status()
    assert server_delta(before, after) == dict(samples=3, calls=2, errors=0, refusals=0, malformed=0, replayed=0)


def test_a_resend_while_the_device_is_still_busy_is_not_evaluated_again(server):
    """The client gives up waiting before the slow device answers, resends, and gets the one evaluation."""
    device = RemoteDevice(server.address, token=TOKEN, retry_interval=0.15, timeout=20)
    before = device.status()
    x = torch.full((3, 4), remote_devices.SLOW)
    assert torch.equal(device(x), remote_devices.tanh_device(x))
    after = device.status()
    assert device.calls.resends >= 2  # SLOW_SECONDS = 0.6 s at a resend every 0.15 s
    delta = server_delta(before, after)
    # each resend that reached the server was joined to the evaluation (one lost with its socket is not counted)
    assert 1 <= delta["replayed"] <= device.calls.resends
    assert (delta["samples"], delta["calls"]) == (3, 1) == (device.calls.samples, device.calls.calls)


def test_unreachable_server_names_the_address_and_what_to_check():
    port = free_port()
    device = RemoteDevice(f"127.0.0.1:{port}", token=TOKEN, timeout=0.6, retry_interval=0.2)
    start = time.monotonic()
    with pytest.raises(RemoteUnavailable, match=rf"no reply from tcp://127\.0\.0\.1:{port} within timeout=0\.6 s \([23] sends\)"):
        device(torch.ones(1, 4))
    assert time.monotonic() - start < 3
    with pytest.raises(RemoteUnavailable, match="`blackgrad serve` is running there.*firewall.*raise timeout="):
        device.status()
    assert device.calls.calls == 0


def test_clients_are_served_one_at_a_time_in_arrival_order(serve_process):
    served = serve_process("remote_devices:make_ordered", "seconds=0.4")
    results: dict[int, float] = {}

    def client(i: int) -> None:
        # a long retry interval: a resend while queued would be right too, but this test counts replays
        results[i] = float(RemoteDevice(served.address, token=TOKEN, retry_interval=20)(torch.zeros(2, 1))[0, 0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # arrival order 0, 1, 2
    status = RemoteDevice(served.address, token=TOKEN).status()  # answered between the first two evaluations
    for t in threads:
        t.join(timeout=10)
    assert (status["calls"], status["queue"]) == (1, 2)
    assert results == {0: 1.0, 1: 2.0, 2: 3.0}  # the device's own call index: arrival order, no overlap
    final = RemoteDevice(served.address, token=TOKEN).status()
    assert (final["samples"], final["calls"], final["errors"], final["queue"]) == (6, 3, 0, 0)
    served.stop()  # SIGTERM: the server stops as on Ctrl-C and says what it served
    deadline = time.monotonic() + 10
    while not any(line.startswith("stopped;") for line in served.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.process.returncode == 0
    assert "stopped; served 6 samples in 3 calls (0 errors, 0 refusals, 0 malformed, 0 replayed)" in served.lines


def test_a_lost_reply_is_answered_from_memory_not_evaluated_twice(serve_process, tmp_path):
    log = tmp_path / "evaluations"
    served = serve_process("remote_devices:make_tanh", f"log={str(log)!r}", options=["--drop-replies", "1"])
    device = RemoteDevice(served.address, token=TOKEN, retry_interval=0.3, timeout=20)
    x = torch.randn(4, 4)
    assert torch.equal(device(x), remote_devices.tanh_device(x))  # its first reply was lost
    assert torch.equal(device(x), remote_devices.tanh_device(x))
    status = device.status()
    assert device.calls.resends >= 1 and 1 <= status["replayed"] <= device.calls.resends
    assert (status["samples"], status["calls"]) == (8, 2) == (device.calls.samples, device.calls.calls)
    assert log.read_text().split() == ["4", "4"]  # the device's own count: each request once


def test_a_pickled_copy_is_a_new_client_of_the_same_server(server):
    """A worker process gets its own client id: sharing one would let it be answered another's replies."""
    import pickle

    device = RemoteDevice(server.address, token=TOKEN, timeout=5)
    device(torch.ones(1, 4))
    copy = pickle.loads(pickle.dumps(device))
    assert copy.client_id != device.client_id and (copy.address, copy.token, copy.timeout) == (server.address, TOKEN, 5)
    x = torch.randn(2, 4)
    assert torch.equal(copy(x), remote_devices.tanh_device(x)) and copy.calls.samples == 2


def test_numpy_black_box_with_params_through_a_remote_device(server):
    theta = torch.randn(12)
    x = torch.randn(6, 4)
    box = bg.BlackBox(RemoteDevice(server.address, token=TOKEN), FiniteDifference(), params=theta, numpy=True, calibrate=False)
    def numpy_device(x: np.ndarray, theta: np.ndarray) -> np.ndarray:  # as the remote one sees it: numpy in and out
        return remote_devices.tanh_device(torch.from_numpy(x), torch.from_numpy(theta)).numpy()

    local = bg.BlackBox(numpy_device, FiniteDifference(), params=theta, numpy=True, calibrate=False)
    assert torch.equal(box(x), local(x))
    box(x).sum().backward(), local(x).sum().backward()
    assert torch.equal(box.params.grad, local.params.grad)
    assert box.calls.total == local.calls.total == 6 * 2 + 6 * 2 * 12  # two forwards; two-sided differences in θ


def test_start_up_says_where_it_listens_and_warns_beyond_this_machine(server):
    from blackgrad.remote.server import Server, startup_lines

    local = Server(remote_devices.tanh_device, port=0)
    try:
        lines = startup_lines(local, "127.0.0.1")
        assert lines[0] == f"blackgrad: serving tanh_device at {local.address}"
        assert lines[1] == f"token: {local.token}" and len(local.token) >= 32
        assert not any("firewall" in line for line in lines)
        warning = startup_lines(local, "0.0.0.0")[-1]  # as a server given --host 0.0.0.0 would say
        assert "not only this machine: let the firewall admit port" in warning and "SSH tunnel" in warning
    finally:
        local.stop()
        local._context.destroy(linger=0)


def test_the_memory_of_replies_is_bounded_by_count_and_bytes():
    """An evicted reply is evaluated again when resent (the documented limit); a remembered one is replayed."""
    from blackgrad.remote.server import Server

    calls = []
    server = Server(lambda x: calls.append(x.shape[0]) or x * 2, port=0, token=TOKEN, replay_cache=3, replay_bytes=3000)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        def ask(request_id: int, rows: int) -> dict:
            x = np.ones((rows, 4), dtype=np.float64)  # 32 bytes a row
            reply, frames = raw_request(server.address, encode(dict(op="eval", token=TOKEN, client="c", id=request_id), [x]))
            assert reply["ok"] and len(frames) == 1 and len(frames[0]) == rows * 32
            return reply

        for request_id in range(1, 5):  # four small replies: the count bound (3) evicts the first
            ask(request_id, 1)
        ask(1, 1)  # forgotten: evaluated again
        ask(4, 1)  # remembered: replayed
        assert calls == [1, 1, 1, 1, 1] and server.ledger.replayed == 1
        ask(10, 60)  # 1920 bytes of output: with the three small ones it passes the byte bound, they go
        ask(11, 60)  # two of these do not fit in 3000 bytes: 10 goes
        ask(11, 60)  # remembered: replayed
        ask(10, 60)  # forgotten: evaluated again
        assert calls == [1] * 5 + [60] * 3 and server.ledger.replayed == 2
    finally:
        server.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_device_pool_holds_remote_devices(server):
    """Identical devices on several lab PCs (here: two clients of one server) as one device."""
    from blackgrad.pool import DevicePool

    devices = [RemoteDevice(server.address, token=TOKEN) for _ in range(2)]
    before = devices[0].status()
    x, theta = torch.randn(10, 4), torch.randn(12)
    with DevicePool(devices, mode="threads") as pool:
        assert torch.equal(pool(x, theta), remote_devices.tanh_device(x, theta))
    assert [d.calls.samples for d in devices] == [5, 5]  # one contiguous share each
    assert server_delta(before, devices[0].status())["samples"] == 10


# ------------------------------------------------------ training through it
def train(fun, steps: int, seed: int = 0, box=None):
    """A few SPSA steps of a model around a black box with params; returns the model and its box."""
    torch.manual_seed(seed)
    if box is None:
        box = bg.BlackBox(fun, SPSA(directions=2, step=1e-2), params=torch.randn(12) * 0.5, calibrate=False)
    model = nn.Sequential(nn.Linear(2, 4), box, nn.Linear(3, 1))
    data = torch.randn(8, 2)
    target = data[:, :1] * data[:, 1:]
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, box, data, target, optimiser


def step(model, data, target, optimiser) -> None:
    optimiser.zero_grad()
    nn.functional.mse_loss(model(data), target).backward()
    optimiser.step()


def test_training_through_a_remote_device_is_identical_to_local(server):
    local, local_box, *rest = train(remote_devices.tanh_device, 0)
    for _ in range(5):
        step(local, *rest)
    device = RemoteDevice(server.address, token=TOKEN)
    before = device.status()
    remote, remote_box, *rest = train(device, 0)
    for _ in range(5):
        step(remote, *rest)
    for a, b in zip(local.state_dict().values(), remote.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    total = remote_box.calls.total
    assert total == local_box.calls.total == 5 * 8 * (1 + 2 * 2)
    assert server_delta(before, device.status())["samples"] == device.calls.samples == total


def test_server_killed_and_restarted_mid_request_training_resumes_exactly(serve_process, tmp_path):
    """The server dies while the device holds a request; the client resends until a new server answers.

    Then the server dies for good: the next step fails with a clear error and changes nothing.
    """
    log, hold = tmp_path / "evaluations", tmp_path / "hold"
    options = [f"log={str(log)!r}", f"hold={str(hold)!r}"]
    port = free_port()
    first = serve_process("remote_devices:make_tanh", *options, port=port)
    device = RemoteDevice(first.address, token=TOKEN, retry_interval=0.3, timeout=STARTUP_SECONDS)
    remote, box, *rest = train(device, 0)
    local, local_box, *local_rest = train(remote_devices.tanh_device, 0)
    step(remote, *rest)
    step(local, *local_rest)

    restarted: list[Served] = []

    def kill_and_restart() -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not Path(str(hold) + ".held").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        first.kill()  # in the middle of the held evaluation: it is never answered nor logged
        hold.unlink()
        restarted.append(serve_process("remote_devices:make_tanh", *options, port=port))

    hold.write_text("")
    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    step(remote, *rest)  # waits through the kill and the restart
    killer.join(timeout=STARTUP_SECONDS)
    step(local, *local_rest)
    assert restarted and device.calls.resends >= 1
    for a, b in zip(local.state_dict().values(), remote.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    evaluated = sum(map(int, log.read_text().split()))  # the device's own count, over both servers
    assert evaluated == device.calls.samples == box.calls.total == 2 * 8 * 5

    restarted[0].kill()
    device.timeout = 1.0
    params = [p.detach().clone() for p in remote.parameters()]
    with pytest.raises(bg.DeviceError, match=r"RemoteUnavailable: no reply from tcp://127\.0\.0\.1:\d+ within timeout=1 s"):
        step(remote, *rest)
    assert all(torch.equal(p, q) for p, q in zip(params, remote.parameters()))  # no step on a missing gradient
    assert sum(map(int, log.read_text().split())) == device.calls.samples


# ------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["no_such_module_here:make"], "cannot import module 'no_such_module_here' .*run from the folder that holds it"),
        (["remote_devices:make_nothing"], "module 'remote_devices' has no attribute 'make_nothing'"),
        (["remote_devices"], "the factory must be given as module:function"),
        (["remote_devices:RAISE"], "remote_devices:RAISE is a float, not a function that makes the device"),
        (["remote_devices:make_broken"], "the factory remote_devices:make_broken raised RuntimeError: the camera is unplugged"),
        (["remote_devices:make_tanh", "nonsense=1"], "raised TypeError: .*unexpected keyword argument 'nonsense'"),
    ],
)
def test_serve_command_reports_bad_factories_clearly(arguments, message):
    from typer.testing import CliRunner

    from blackgrad.cli import app

    result = CliRunner().invoke(app, ["serve", *arguments, "--app-dir", str(TESTS)])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output) and "Traceback" not in result.output


def test_serve_command_reports_a_module_that_fails_to_import(tmp_path):
    from typer.testing import CliRunner

    from blackgrad.cli import app

    (tmp_path / "broken_lab.py").write_text("raise RuntimeError('driver DLL not found')\n")
    result = CliRunner().invoke(app, ["serve", "broken_lab:make", "--app-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "importing module 'broken_lab' raised RuntimeError: driver DLL not found" in result.output
    assert "Traceback" not in result.output


def test_serve_command_reports_a_port_in_use(server):
    from typer.testing import CliRunner

    from blackgrad.cli import app

    result = CliRunner().invoke(app, ["serve", "remote_devices:make_tanh", "--port", str(server.port), "--app-dir", str(TESTS)])
    assert result.exit_code == 2
    assert re.search(rf"cannot listen on tcp://127\.0\.0\.1:{server.port}: .*another server using the port", result.output)


# ------------------------------------------------------------------- docs
def test_remote_device_doc_example_runs_on_localhost(serve_process, tmp_path, monkeypatch, capsys):
    """docs/remote-device.md as written: its lab file, its serve command and its trainer, on a free port."""
    import shlex

    text = (ROOT / "docs" / "remote-device.md").read_text()
    lab_file, trainer = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (command,) = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()
                  if line.startswith("blackgrad serve")]
    (tmp_path / "lab_devices.py").write_text(lab_file)
    words = shlex.split(command)[2:]
    at = words.index("--port")
    assert words[at + 1] == "5555" and '"tcp://127.0.0.1:5555"' in trainer
    port = free_port()
    served = serve_process(*(words[:at] + words[at + 2 :]), port=port, token=None, cwd=tmp_path)  # the printed token
    monkeypatch.setenv("BLACKGRAD_TOKEN", served.token)
    namespace = {"__name__": "__doc_example__"}
    exec(compile(trainer.replace("5555", str(port)), "remote-device.md", "exec"), namespace)
    physical, device, status = namespace["physical"], namespace["device"], namespace["status"]
    assert "Ledger(" in capsys.readouterr().out
    assert namespace["loss"].item() < 0.65  # the sign of a product: chance level is an MSE near 1
    assert status["samples"] == device.calls.samples == physical.calls.total == 60 * 256 * (1 + 2 * 4)
    assert status["refusals"] == status["errors"] == status["malformed"] == 0
