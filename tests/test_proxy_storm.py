"""The fault proxy under a storm: mode switches at any moment while connections come and go.

The proxy is the harness every outage test stands on, so it is attacked like the library: client
threads connect, send, read a little and close in a loop (some reset, some half-close) while
another thread switches modes at random (``down``, ``restore``, ``silent``, ``freeze``,
``reset``, ``latency``) every few milliseconds. Every switch must return (none may raise or wait
out the 5 s answer limit), the proxy's thread must stay alive, and once restored it forwards
again. Before this test, a connection accepted in the same select round as ``down()`` killed the
proxy thread on an assertion, and every later call failed with "did not answer within 5 s".
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dbresilience.faults import FaultProxy

STORM_SECONDS = 4.0  # at least this long, and at least SWITCHES switches, however slow the machine
SWITCHES = 150
CLIENTS = 8


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(5)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on a free port (the proxy is generic TCP: no database needed)."""
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


def _client(address: tuple[str, int], stop: threading.Event, seed: int, done: list[int]) -> None:
    rnd = random.Random(seed)
    while not stop.is_set():
        with contextlib.suppress(OSError):
            sock = socket.create_connection(address, timeout=0.2)
            try:
                sock.sendall(b"x" * rnd.choice((1, 100, 70_000)))
                how = rnd.random()
                if how < 0.3:
                    sock.recv(65536)
                elif how < 0.5:
                    sock.shutdown(socket.SHUT_WR)  # a half-close: FIN while data is in flight
                    sock.recv(65536)
                elif how < 0.7:  # an RST from the client side
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                done[0] += 1
            finally:
                sock.close()


def _switch(proxy: FaultProxy, rnd: random.Random) -> str:
    name, action = rnd.choice(
        [
            ("down", proxy.down),
            ("restore", proxy.restore),
            ("restore", proxy.restore),
            ("silent", proxy.silent),
            ("freeze", proxy.freeze),
            ("reset", proxy.reset),
            ("latency", lambda: proxy.latency(rnd.choice((0.001, 0.02, 0.2)))),
            ("no latency", lambda: proxy.latency(0)),
        ]
    )
    action()
    return name


def _round_trip(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.slow
def test_mode_switches_under_a_connect_storm_never_kill_the_proxy(
    echo: tuple[str, int],
    make_proxy: Callable[[str, int], FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any mode switch, at any moment of any connection, returns and leaves the proxy alive."""
    caplog.set_level(logging.ERROR, logger="dbresilience.faults")
    proxy = make_proxy(*echo)
    assert _round_trip(proxy.address, b"hello") == b"hello"
    stop = threading.Event()
    done = [0]
    clients = [
        threading.Thread(target=_client, args=(proxy.address, stop, seed, done), daemon=True)
        for seed in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    rnd = random.Random(17)
    switches: dict[str, int] = {}
    slowest = 0.0
    try:
        end = time.monotonic() + STORM_SECONDS
        hang = end + 120  # a guard against a hang, not a deadline
        while time.monotonic() < end or sum(switches.values()) < SWITCHES:
            assert time.monotonic() < hang, switches
            started = time.monotonic()
            name = _switch(proxy, rnd)  # raises RuntimeError if the proxy thread died
            slowest = max(slowest, time.monotonic() - started)
            switches[name] = switches.get(name, 0) + 1
            time.sleep(rnd.choice((0.0, 0.001, 0.005, 0.02)))
    finally:
        stop.set()
        for thread in clients:
            thread.join(5)
    assert proxy._thread is not None
    assert proxy._thread.is_alive()
    assert sum(switches.values()) >= SWITCHES, switches
    # every switch answered within the proxy's own 5 s limit (_switch raises otherwise); a
    # tighter bound here measured the machine's load, not the proxy (a loaded run made 92
    # switches in 4 s where an idle one makes several hundred)
    assert slowest < 5.0, f"a mode switch took {slowest:.2f} s"
    assert done[0] > 0
    # the loop's safety net (an event that failed resets its connection) was never needed
    assert not [r for r in caplog.records if r.name == "dbresilience.faults"]
    proxy.latency(0)
    proxy.restore()
    payload = bytes(range(256)) * 1000
    assert _round_trip(proxy.address, payload) == payload
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1).close()
    proxy.restore()
    assert _round_trip(proxy.address, b"again") == b"again"
