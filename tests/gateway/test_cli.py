"""``cyxwiz gateway run`` builds a gateway that checks revocations (issue 18; SPEC B5, C1): the
coordinator's database is required, and what is built from it reads bans, revoked sessions and dead job
tokens; the key ring it verifies with follows rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.gateway import cli as gateway_cli
from cyxwiz.gateway.standing import StoreStanding
from cyxwiz.tokens.keyring import DirKeyRingStore, KeyRing


class _Built(Exception):
    pass


def test_gateway_cli_requires_the_coordinator_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(gateway_cli.app, ["--keyring", str(tmp_path)])
    assert result.exit_code != 0 and "--db-url" in result.output


def test_gateway_cli_wires_revocations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring_dir = tmp_path / "keyring"
    DirKeyRingStore(ring_dir).save(KeyRing.generate())
    seen: dict[str, Any] = {}

    def build(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise _Built

    import cyxwiz.gateway.service as service

    monkeypatch.setattr(service, "build_gateway", build)
    db = f"sqlite:///{tmp_path / 'coordinator.db'}"
    CoordinatorStore.from_url(db)  # the coordinator's schema
    result = CliRunner().invoke(
        gateway_cli.app,
        ["--keyring", str(ring_dir), "--db-url", db, "--pki-dir", str(tmp_path / "pki")],
    )
    assert isinstance(result.exception, _Built), result.output
    assert isinstance(seen["standing"], StoreStanding)
    assert isinstance(seen["verifier"].revocations, CoordinatorStore)


def test_the_gateway_the_cli_runs_refuses_a_revoked_session_and_a_banned_node(tmp_path: Path) -> None:
    """Attack on the real thing (issue 18 audit list: "the gateway built by its CLI checks no session
    revocations"): ``cyxwiz gateway run`` as its own process over the coordinator's database; a node's
    session works (control), then is refused 401 once revoked, and a banned node's fresh session 403, with
    the refusals in the gateway's audit log."""
    import json
    import os
    import subprocess
    import sys
    import time

    import httpx

    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.transport.tls import client_context
    from infra.local_server import free_port
    from tests._coordinator import start_dev_coordinator
    from tests.gateway.conftest import POOL, Upstream, _serve

    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a",))
    state = tmp_path / "state"
    coord = start_dev_coordinator(pki, state)
    up_server, up_port = _serve(Upstream().app())
    port = free_port()
    argv = [
        sys.executable, "-m", "cyxwiz.cli", "gateway", "run", "--keyring", str(state / "keyring"),
        "--db-url", f"sqlite:///{state / 'coordinator.db'}", "--pki-dir", str(tmp_path / "pki"),
        "--upstream", f"http://127.0.0.1:{up_port}", "--pool", POOL, "--audit-dir", str(tmp_path / "audit"),
        "--dev", "--port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        ctx = client_context(
            trust_bundle=pki.bundle, cert=pki.node_cert("node-a"), key=pki.node_key("node-a")
        )
        with httpx.Client(base_url=coord.url, verify=ctx, timeout=30) as c:
            node = c.post("/v1/nodes/register", json={"hardware": {}}).json()
        gateway = httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30,
            headers={"authorization": f"Bearer {node['session_token']}"},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                first = gateway.get("/api/admin/version")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
                time.sleep(0.3)
        assert first.status_code == 200  # positive control
        coord.store.revoke_session(node["session_id"])
        revoked = gateway.get("/api/admin/version")
        assert revoked.status_code == 401 and revoked.json()["type"].endswith("token-revoked")
        with httpx.Client(base_url=coord.url, verify=ctx, timeout=30) as c:
            again = c.post("/v1/nodes/register", json={"hardware": {}}).json()  # a fresh session ...
        coord.store.set_node_status(node["node_id"], "banned")  # ... of a node banned meanwhile
        banned = gateway.get(
            "/api/admin/version", headers={"authorization": f"Bearer {again['session_token']}"}
        )
        assert banned.status_code == 403 and banned.json()["field"] == "node_id"
        gateway.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        coord.stop()
        up_server.should_exit = True
    lines = [
        json.loads(text) for p in (tmp_path / "audit").glob("*.jsonl") for text in p.read_text().splitlines()
    ]
    events = [line["event"] for line in lines if "event" in line]
    reasons = [str(e["details"].get("reason")) for e in events if e["outcome"] != "success"]
    assert "token-revoked: the session was revoked" in reasons
    assert "403 forbidden: node is banned" in reasons
