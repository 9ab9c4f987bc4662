"""``cyxwiz.sdnotify``: the READY=1 datagram systemd's ``Type=notify`` waits for."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cyxwiz.sdnotify import notify_ready


def test_ready_reaches_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify_ready("serving on /run/x.sock") is True
        assert server.recv(256) == b"READY=1\nSTATUS=serving on /run/x.sock"


def test_abstract_namespace_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cyxwiz-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify_ready() is True
        assert server.recv(64) == b"READY=1"


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_ready() is False


def test_a_dead_notify_socket_does_not_stop_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify_ready() is False


def test_a_service_announces_ready_to_systemd_after_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifier, the issuer and the ledger service all say they listen through announce_ready."""
    from cyxwiz.unix_json_server import announce_ready

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        announce_ready(tmp_path / "ready.json", {"socket": "/run/cyxwiz-verifier/verifier.sock"})
        assert server.recv(256) == b"READY=1\nSTATUS=listening on /run/cyxwiz-verifier/verifier.sock"
    assert (tmp_path / "ready.json").exists()
