"""Job bridge host side (SPEC E4–E6): socket mode, protocol refusals, file replies, resilience."""

from __future__ import annotations

import hashlib
import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.sandbox.bridge import BridgeServer
from cyxwiz.sandbox.bridge_client import BridgeClient, BridgeClientError
from cyxwiz.sandbox.protocol import MAX_LINE

H = "ab" * 32


@pytest.fixture
def server(tmp_path: Path) -> Iterator[BridgeServer]:
    (tmp_path / "out").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.bin").write_bytes(b"training data")
    (tmp_path / "secret").write_text("host secret")
    (tmp_path / "in" / "escape").symlink_to(tmp_path / "secret")
    seen: list[dict[str, Any]] = []
    srv = BridgeServer(
        socket_path=tmp_path / "b.sock",
        output_dir=tmp_path / "out",
        input_dir=tmp_path / "in",
        on_message=seen.append,
    )
    srv.seen = seen  # type: ignore[attr-defined]
    with srv:
        yield srv


def _conn(srv: BridgeServer) -> tuple[socket.socket, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(srv.socket_path))
    return s, s.makefile("rb")


def _reply(f: Any) -> dict[str, Any]:
    return json.loads(f.readline())  # type: ignore[no-any-return]


def _wait(cond: Any) -> None:
    end = time.monotonic() + 5
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)


def test_socket_is_0600(server: BridgeServer) -> None:
    mode = server.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert mode & 0o777 == 0o600


def test_client_messages_recorded_in_order(server: BridgeServer) -> None:
    with BridgeClient(path=str(server.socket_path)) as c:
        c.hello("job-1")
        c.progress(1, 10)
        c.metrics(1, {"loss": 0.25, "acc": 1})
        (server.output_dir / "ckpt.pt").write_bytes(b"w")
        c.checkpoint(1, H, H, "ckpt.pt")
        info = c.request_file("data.bin")
    assert info["sha256"] == hashlib.sha256(b"training data").hexdigest()
    assert info["size"] == len(b"training data")
    _wait(lambda: len(server.messages) == 5)
    kinds = [m["kind"] for m in server.messages]
    assert kinds == ["hello", "progress", "metrics", "checkpoint", "file_request"]
    assert server.seen == server.messages  # type: ignore[attr-defined]
    assert server.errors == []


BAD_LINES = {
    "not-json": (b"hello there", "bad-json"),
    "nan": (b'{"v":1,"kind":"metrics","step":1,"values":{"loss":NaN}}', "bad-json"),
    "array": (b"[1,2]", "bad-json"),
    "bad-utf8": (b'{"v":1,"kind":"hello","job_id":"\xff"}', "bad-json"),
    "version-2": (b'{"v":2,"kind":"hello","job_id":"j"}', "bad-version"),
    "version-true": (b'{"v":true,"kind":"hello","job_id":"j"}', "bad-version"),
    "unknown-kind": (b'{"v":1,"kind":"exec","cmd":"rm -rf /"}', "unknown-kind"),
    "extra-field": (b'{"v":1,"kind":"progress","step":1,"total":2,"shell":"x"}', "bad-field"),
    "missing-field": (b'{"v":1,"kind":"progress","step":1}', "bad-field"),
    "bool-step": (b'{"v":1,"kind":"progress","step":true,"total":2}', "bad-field"),
    "step-gt-total": (b'{"v":1,"kind":"progress","step":3,"total":2}', "bad-field"),
    "negative-step": (b'{"v":1,"kind":"metrics","step":-1,"values":{"a":1}}', "bad-field"),
    "metric-name": (b'{"v":1,"kind":"metrics","step":1,"values":{"a b;rm":1}}', "bad-field"),
    "metric-string": (b'{"v":1,"kind":"metrics","step":1,"values":{"a":"1"}}', "bad-field"),
    "bad-hash": (
        b'{"v":1,"kind":"checkpoint","step":1,"weights_sha256":"xyz","batch_indices_sha256":"xyz","path":"a"}',
        "bad-field",
    ),
    "job-id": (b'{"v":1,"kind":"hello","job_id":"$(reboot)"}', "bad-field"),
}  # fmt: skip


@pytest.mark.parametrize(("line", "code"), list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_bad_lines_refused_connection_kept(server: BridgeServer, line: bytes, code: str) -> None:
    s, f = _conn(server)
    with s:
        s.sendall(line + b"\n")
        reply = _reply(f)
        assert (reply["v"], reply["kind"], reply["code"]) == (1, "error", code)
        # the connection is still usable
        s.sendall(b'{"v":1,"kind":"progress","step":1,"total":1}\n')
        _wait(lambda: len(server.messages) == 1)
    assert server.messages == [{"v": 1, "kind": "progress", "step": 1, "total": 1}]
    assert server.errors[0]["code"] == code


def test_oversize_line_refused_and_discarded(server: BridgeServer) -> None:
    s, f = _conn(server)
    with s:
        s.sendall(b'{"v":1,"kind":"hello","job_id":"' + b"a" * (MAX_LINE + 10) + b'"}\n')
        assert _reply(f)["code"] == "too-large"
        s.sendall(b'{"v":1,"kind":"hello","job_id":"ok"}\n')
        _wait(lambda: len(server.messages) == 1)
    assert server.messages[0]["job_id"] == "ok"


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../secret", "escape", "%2e%2e/secret", "a\x00b", "x" * 5000, "missing"]
)
def test_file_request_attacks(server: BridgeServer, path: str) -> None:
    with (
        BridgeClient(path=str(server.socket_path)) as c,
        pytest.raises(BridgeClientError, match="bridge-path"),
    ):
        c.request_file(path)
    assert server.messages == []


def test_checkpoint_path_must_stay_in_output(server: BridgeServer, tmp_path: Path) -> None:
    (server.output_dir / "leak").symlink_to(tmp_path / "secret")
    s, f = _conn(server)
    with s:
        for p in ("../secret", "leak", "nope.pt"):
            msg = {
                "v": 1,
                "kind": "checkpoint",
                "step": 1,
                "weights_sha256": H,
                "batch_indices_sha256": H,
                "path": p,
            }
            s.sendall(json.dumps(msg).encode() + b"\n")
            assert _reply(f)["code"] == "bridge-path"
    assert server.messages == []


def test_many_connections_and_garbage_do_not_kill_server(server: BridgeServer) -> None:
    for _ in range(10):
        s, _f = _conn(server)
        s.sendall(b"\xff\xfe\x00garbage")
        s.close()
    with BridgeClient(path=str(server.socket_path)) as c:
        c.progress(1, 1)
    _wait(lambda: len(server.messages) == 1)
    assert server.messages[0]["kind"] == "progress"


def test_client_refuses_nan_and_oversize(server: BridgeServer) -> None:
    with BridgeClient(path=str(server.socket_path)) as c:
        with pytest.raises(BridgeClientError):
            c.metrics(1, {"loss": float("nan")})
        with pytest.raises(BridgeClientError):
            c.hello("a" * MAX_LINE)


def test_from_env_needs_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CYXWIZ_BRIDGE", raising=False)
    with pytest.raises(BridgeClientError, match="CYXWIZ_BRIDGE"):
        BridgeClient.from_env()


def test_recorded_bytes_are_capped(server: BridgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import cyxwiz.sandbox.bridge as bridge_mod

    monkeypatch.setattr(bridge_mod, "MAX_RECORDED_BYTES", 2000)
    s, f = _conn(server)
    with s:
        line = json.dumps({"v": 1, "kind": "metrics", "step": 1, "values": {f"m{i}": i for i in range(40)}})
        for _ in range(10):
            s.sendall(line.encode() + b"\n")
        assert _reply(f)["code"] == "too-many"
    assert sum(len(json.dumps(m)) for m in server.messages) <= 2000 + len(line)
