"""The trusted services' JSON over HTTP/1.1 on a Unix socket, both ends (issue 17; F1, F2, A7, I).

A real server process (:func:`cyxwiz.unix_json_server.serve_unix`, as the verifier and the issuer run it)
behind a tiny service; the client is :class:`cyxwiz.unix_json.UnixJsonClient`. Malformed or oversized
requests get the precise JSON refusal; a crashing handler answers a plain 500, which the client reports
as unreachable (outcome unknown), never as a refusal; SIGTERM lets the answer in progress out, then exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyxwiz.unix_json import ServiceUnreachable, UnixJsonClient

SERVICE = """
import os, pathlib, resource, sys, time
import cyxwiz.unix_json_server as server

if len(sys.argv) > 4:  # few descriptors: accept() runs out of them
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + int(sys.argv[4]), 1024))

class Service:
    def handle(self, method, path, body):
        if path == "/echo":
            return 200, {"method": method, "body": body}
        if path == "/slow":
            pathlib.Path(sys.argv[3]).write_text("started")
            time.sleep(1.5)
            return 200, {"slow": True}
        if path == "/crash":
            raise RuntimeError("a bug")
        return 404, {"error": {"code": "not-found", "message": f"no route {method} {path}"}}

server.KEEP_ALIVE_S = 1.0
server.MAX_CONNECTIONS = int(os.environ.get("TEST_MAX_CONNECTIONS", "512"))
server.serve_unix(Service(), socket_path=pathlib.Path(sys.argv[1]), mode=0o600, max_body=1024,
                  ready_file=pathlib.Path(sys.argv[2]))
"""


@contextlib.contextmanager
def _serve(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    path, ready = tmp_path / "run" / "s.sock", tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(path), str(ready), str(tmp_path / "slow-started"), *extra],
        stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the service never came up"
            time.sleep(0.05)
        assert json.loads(ready.read_text())["pid"] == proc.pid
        yield proc, path
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    extra = [str(request.param)] if hasattr(request, "param") else []
    with _serve(tmp_path, *extra) as found:
        yield found


def _raw(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after a refusal: read to EOF
            answer += chunk
    return answer


def _error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head
    return int(head.split(b" ")[1]), json.loads(body)["error"]


def test_requests_and_refusals(served: tuple[subprocess.Popen[bytes], Path]) -> None:
    _proc, path = served
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    client = UnixJsonClient(path, timeout_s=10)
    try:
        assert client.request("POST", "/echo", {"a": [1, "é"]}) == (
            200,
            {"method": "POST", "body": {"a": [1, "é"]}},
        )
        assert client.request("GET", "/echo") == (200, {"method": "GET", "body": None})  # same connection
        status, payload = client.request("GET", "/nowhere%2Fx?q=1")
        assert (status, payload["error"]["message"]) == (404, "no route GET /nowhere/x")
        with pytest.raises(ServiceUnreachable, match="JSONDecodeError"):
            client.request("GET", "/crash")  # a bug is no refusal: outcome unknown
        with pytest.raises(ServiceUnreachable):  # a header smuggled in the path is never sent
            client.request("GET", "/echo\r\nx-injected: 1")
        assert client.request("GET", "/echo")[0] == 200  # a fresh connection after the failures
        time.sleep(1.5)  # the service closes the idle connection; the next request opens another
        assert client.request("GET", "/echo")[0] == 200
    finally:
        client.close()
    not_json = b"POST /echo HTTP/1.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{x"
    assert _error(_raw(path, not_json)) == (400, {"code": "validation", "message": "body is not JSON"})
    crashed = _raw(path, b"GET /crash HTTP/1.1\r\n\r\n")
    assert crashed.startswith(b"HTTP/1.1 500 ") and crashed.endswith(b"Internal Server Error")
    assert _error(_raw(path, b"POST /echo HTTP/1.1\r\ncontent-length: 5000\r\n\r\n")) == (
        413, {"code": "too-large", "message": "request too large"},
    )  # fmt: skip
    assert _error(_raw(path, b"GARBAGE\r\n\r\n"))[0] == 400
    assert (
        _error(_raw(path, b"POST /echo HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n{"))[0]
        == 400
    )
    assert _error(_raw(path, b"POST /echo HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"))[0] == 400
    chunked = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    chunked += b"3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"
    assert _raw(path, chunked).endswith(b'{"method":"POST","body":[1,2]}')
    with socket.socket(socket.AF_UNIX) as curl:  # curl waits for "100 Continue" before a body over 1 KiB
        curl.settimeout(10)
        curl.connect(str(path))
        curl.sendall(b"POST /echo HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
        assert curl.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        curl.sendall(b"[]")
        assert curl.recv(1000).endswith(b'{"method":"POST","body":[]}')
    negative = b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n-1\r\n"  # never "read to EOF"
    assert _error(_raw(path, negative))[0] == 400


def test_sigterm_answers_the_request_in_progress_and_exits(
    served: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, path = served
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(path))
    idle.settimeout(10)
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(str(path))
    slow.settimeout(10)
    slow.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
    started = tmp_path / "slow-started"
    while not started.exists():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    answer = b""
    while chunk := slow.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer
    assert answer.endswith(b'{"slow":true}')
    assert idle.recv(1) == b""  # the idle connection was ended, not left hanging
    assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else b""
    idle.close()
    slow.close()


@pytest.mark.parametrize("served", [6], indirect=True)
def test_out_of_descriptors_the_service_waits_and_serves_on(
    served: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, path = served
    clients = []
    for _ in range(12):  # more connections than it has descriptors left: accept() fails with EMFILE
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # queued in the backlog even when not accepted
        clients.append(client)
    time.sleep(0.5)
    for client in clients:
        client.close()
    fresh = UnixJsonClient(path, timeout_s=10)
    try:
        assert fresh.request("GET", "/echo") == (200, {"method": "GET", "body": None})
    finally:
        fresh.close()
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and b"accept failed, still serving" in proc.stderr.read()


def test_connections_past_the_bound_are_closed_and_the_held_ones_still_served(tmp_path: Path) -> None:
    """A peer that opens and holds connections (a compromised coordinator on the issuer's socket) gets
    no thread for each one past ``MAX_CONNECTIONS``: the extra ones are closed at once, nothing was
    asked; the connections within the bound are served; one freed makes room again."""
    request = b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n"
    with _serve(tmp_path, env={"TEST_MAX_CONNECTIONS": "3"}) as (proc, path):
        held: list[socket.socket] = []
        try:
            for _ in range(3):
                sock = socket.socket(socket.AF_UNIX)
                sock.settimeout(10)
                sock.connect(str(path))
                held.append(sock)
            time.sleep(0.3)  # accepted, each waiting in its thread for a request
            with socket.socket(socket.AF_UNIX) as extra:
                extra.settimeout(10)
                extra.connect(str(path))
                time.sleep(0.3)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    extra.sendall(request)
                    assert extra.recv(65536) == b""  # closed without an answer
            held[0].sendall(request)
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")  # the bound's own are served
            held.pop(0).close()
            time.sleep(0.3)
            client = UnixJsonClient(path, timeout_s=10)
            try:
                assert client.request("GET", "/echo") == (200, {"method": "GET", "body": None})
            finally:
                client.close()
        finally:
            for sock in held:
                sock.close()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and b"connections refused: 3 open" in proc.stderr.read()
