"""The node keeps its session through several short certificate lifetimes with a job in flight (issue 18;
SPEC A7 automatic renewal, B2, B5).

A real coordinator issuing 8-second node certificates, a real gateway, and the agent's own pieces: its
tunnel with live credentials and its heartbeat loop, which refreshes the session and renews the
certificate at half-life. Nothing is frozen: a Prefect-like client behind the tunnel sends no credential
(or a stale one) and a job token bound to the first certificate, and every call keeps succeeding.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from agents.credentials import LiveCredentials, current_settings, renew
from agents.node_client import (
    CoordinatorChannel,
    fetch_job_token,
    heartbeat_forever,
    read_session,
    register_node,
)
from agents.settings import AgentSettings
from agents.tunnel import running_tunnel
from cyxwiz.coordinator.hooks import BasicHooks
from cyxwiz.coordinator.service import CoordinatorHandle
from cyxwiz.errors import AuthenticationError
from cyxwiz.gateway.service import build_gateway
from cyxwiz.gateway.standing import StoreStanding
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.peerid import peer_id
from cyxwiz.transport.server import MTLSServer
from cyxwiz.transport.tls import client_context
from cyxwiz.verification.proof import SignedProof
from cyxwiz.verification.renewal_links import check_chain
from tests._coordinator import start_dev_coordinator
from tests.gateway.conftest import POOL, Upstream, _serve

#: Short, yet long enough that a renewal at half-life lands well before the expiry on a loaded machine (a
#: listener closes a connection whose certificate expired, mid-request too).
LIFETIME = dt.timedelta(seconds=8)


@dataclass
class World:
    pki: DevPKI
    coord: CoordinatorHandle
    gateway: MTLSServer
    upstream: Upstream
    settings: AgentSettings


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a",))
    coord = start_dev_coordinator(pki, tmp_path / "state", node_cert_lifetime=LIFETIME)
    upstream = Upstream()
    up_server, up_port = _serve(upstream.app())

    gateway, _ = build_gateway(
        cert=pki.gateway_cert, key=pki.gateway_key, trust_bundle=pki.bundle, crl=pki.crl,
        upstream=f"http://127.0.0.1:{up_port}", pool=POOL, verifier=coord.verifier,
        standing=StoreStanding(coord.store),
    )  # fmt: skip
    gateway.start()
    settings = AgentSettings(
        node_name="node-a", cert=pki.node_cert("node-a"), key=pki.node_key("node-a"), ca_bundle=pki.bundle,
        crl=pki.crl, coordinator_url=coord.url, gateway_url=gateway.url, work_root=tmp_path / "agent",
    )  # fmt: skip
    try:
        yield World(pki, coord, gateway, upstream, settings)
    finally:
        gateway.stop()
        coord.stop()
        up_server.should_exit = True


def _tunnel(world: World) -> object:
    ctx = client_context(
        trust_bundle=world.pki.bundle, cert=world.pki.node_cert("node-a"), key=world.pki.node_key("node-a")
    )
    port = int(world.gateway.url.rsplit(":", 1)[1])
    return running_tunnel(
        remote_host="127.0.0.1",
        remote_port=port,
        ssl_context=ctx,
        credentials=LiveCredentials(world.settings),
    )


def test_tunnel_presents_the_current_session_whatever_the_client_froze(world: World) -> None:
    register_node(world.settings)
    with _tunnel(world) as endpoint, httpx.Client(base_url=endpoint.url, timeout=10) as prefect:  # type: ignore[attr-defined]
        assert prefect.get("/api/admin/version").status_code == 200
        stale = {"authorization": "Basic bm9kZTpzdGFsZQ=="}  # node:stale, what a frozen env would send
        assert prefect.get("/api/admin/version", headers=stale).status_code == 200
        # Chunked and sized bodies pass through intact.
        run = world.upstream.add_run(str(read_session(world.settings)["node_id"]), job=False)
        lines = [{"flow_run_id": run["id"], "message": "x" * 70_000}]
        prefect.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
        assert prefect.post("/api/logs/", json=lines).status_code == 200
        assert world.upstream.logs[-1]["message"] == "x" * 70_000
    # Negative control: without the tunnel's credentials the same client is refused.
    ctx = client_context(
        trust_bundle=world.pki.bundle, cert=world.pki.node_cert("node-a"), key=world.pki.node_key("node-a")
    )
    with httpx.Client(base_url=world.gateway.url, verify=ctx, timeout=10) as direct:
        assert direct.get("/api/admin/version").status_code == 401


def test_node_lives_through_several_certificate_lifetimes_with_a_job_in_flight(world: World) -> None:
    register_node(world.settings)
    node_id = str(read_session(world.settings)["node_id"])
    job = world.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
    world.coord.store.assign_job(job.job_id, node_id)
    run = world.upstream.add_run(node_id)  # the queue is the node id
    run["parameters"] = {"job_id": job.job_id}
    first_job_token = fetch_job_token(world.settings, job.job_id)  # bound to the first certificate
    renew(world.settings)  # from the dev PKI's long-lived certificate to the 8-second ones
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat_forever, args=(world.settings, stop, 0.3), daemon=True)
    failures: list[str] = []
    calls = 0
    serials: set[int] = set()
    started = time.monotonic()
    with _tunnel(world) as endpoint:  # type: ignore[attr-defined]
        # The worker's client keeps its connection alive for hours: the tunnel moves it to a new gateway
        # connection under the new certificate after each renewal, between two requests.
        worker = httpx.Client(base_url=endpoint.url, timeout=10)
        beat.start()
        try:
            while time.monotonic() - started < 3 * LIFETIME.total_seconds():
                polled = worker.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
                if polled.status_code != 200:
                    failures.append(f"keep-alive {polled.status_code} {polled.text[:200]}")
                # A fresh connection (a new process of the job): it must present the current cert.
                with httpx.Client(base_url=endpoint.url, timeout=10) as prefect:
                    prefect.post(f"/api/work_pools/{POOL}/get_scheduled_flow_runs", json={})
                    r = prefect.get(
                        f"/api/flow_runs/{run['id']}", headers={"x-cyxwiz-job-token": first_job_token}
                    )
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    calls += 1
                cert_path = current_settings(world.settings).cert
                assert cert_path is not None
                serials.add(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number)
                time.sleep(0.2)
        finally:
            worker.close()
            stop.set()
            beat.join(timeout=10)
    assert not failures, failures[:3]
    assert calls >= 10
    # Several certificates came and went (each lives 8 s, renewed at half-life) over 24 s.
    assert len(serials) >= 4
    node = world.coord.store.node(node_id)
    assert node.status == "active" and node.node_id == node_id  # one node all along
    assert len(world.coord.store.list_nodes()) == 1


class _ProofHooks(BasicHooks):
    """The coordinator's door check on a proof, as the Prefect hooks do it (names the caller, signed)."""

    def verify_completion(self, job: Any, proof: Any, peer: Any) -> str:
        from tasks.hooks import PrefectHooks

        return str(PrefectHooks.verify_completion(self, job, proof, peer))  # type: ignore[arg-type]


def _proof(tmp: Path, job_id: str, cert: Path, key: Path) -> bytes:
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.proof import build_proof, sign_proof

    out = tmp / "out"
    out.mkdir()
    (out / "model.bin").write_bytes(b"weights")
    now = dt.datetime.now(dt.UTC)
    loaded = load_certificate(cert)
    proof = build_proof(
        job_id=job_id, job_spec_sha256="0" * 64, output_dir=out, node_peer_id=peer_id(loaded),
        cert_fingerprint_sha256=fingerprint_sha256(loaded).hex(), token_jti="run-token", started_at=now,
        finished_at=now,
    )  # fmt: skip
    return sign_proof(proof, load_private_key(key)).to_json()


def test_a_flow_run_outlives_the_certificate_it_started_with(world: World, tmp_path: Path) -> None:
    """Issue 18: a job longer than the certificate lifetime (and a renewal between pickup and start):
    the run's channel goes out under the node's current certificate with a job token rebound to it, and
    its proof, signed under the certificate the run started with, is restated by the current one."""
    world.coord.app.app.state.coordinator = replace(
        world.coord.app.app.state.coordinator, hooks=_ProofHooks()
    )  # type: ignore[attr-defined]
    register_node(world.settings)
    node_id = str(read_session(world.settings)["node_id"])
    job = world.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
    world.coord.store.assign_job(job.job_id, node_id)
    renew(world.settings)  # the run starts under an 8-second certificate ...
    started = current_settings(world.settings)
    assert started.cert is not None and started.key is not None
    channel = CoordinatorChannel(settings=started, job_token=fetch_job_token(started, job.job_id))
    channel.report_progress(job.job_id, {"kind": "progress", "step": 1, "total": 4})  # positive control
    signed_at_start = _proof(tmp_path, job.job_id, started.cert, started.key)
    time.sleep(LIFETIME.total_seconds() / 2 + 0.2)
    renew(world.settings)  # the agent renews at half-life (over the identity the run started with) ...
    time.sleep(LIFETIME.total_seconds() / 2 + 0.3)  # ... and the run's certificate expires while it runs
    ctx = client_context(trust_bundle=world.pki.bundle, cert=started.cert, key=started.key)
    with pytest.raises(httpx.HTTPError), httpx.Client(base_url=world.coord.url, verify=ctx) as stale:
        stale.get("/v1/health")  # what a run frozen on its first certificate would get now
    channel.report_progress(job.job_id, {"kind": "progress", "step": 2, "total": 4})
    assert world.coord.store.job(job.job_id).progress["step"] == 2
    channel.submit_proof(job.job_id, signed_at_start)
    assert world.coord.store.job(job.job_id).status == "verifying"
    stored = world.coord.store.job(job.job_id).proof
    assert stored is not None
    now_cert = current_settings(world.settings).cert
    assert now_cert is not None
    assert stored["proof"]["node_peer_id"] == peer_id(load_certificate(now_cert))
    # The restated proof still names the key the run was trained for (its certificate expired meanwhile)
    # and carries that key's signed renewal link to the current key: the verifier's trainer check holds
    # on the proof alone (issue 17; A7, F1).
    restated = SignedProof.from_json(json.dumps(stored))
    trainer = peer_id(load_certificate(started.cert))
    assert restated.proof.trainer() == trainer != restated.proof.node_peer_id
    assert check_chain(trainer, restated.proof.node_peer_id, restated.proof.renewal_links) == 1


def test_a_proof_of_another_key_is_not_restated(world: World, tmp_path: Path) -> None:
    """The restatement needs the earlier signature to verify under one of the node's own certificates:
    a proof signed by another node's key goes on unchanged and the coordinator refuses it."""
    world.coord.app.app.state.coordinator = replace(
        world.coord.app.app.state.coordinator, hooks=_ProofHooks()
    )  # type: ignore[attr-defined]
    other = build_dev_pki(tmp_path / "other", nodes=("node-x",))
    register_node(world.settings)
    node_id = str(read_session(world.settings)["node_id"])
    job = world.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
    world.coord.store.assign_job(job.job_id, node_id)
    channel = CoordinatorChannel(
        settings=world.settings, job_token=fetch_job_token(world.settings, job.job_id)
    )
    renew(world.settings)
    forged = _proof(tmp_path, job.job_id, other.node_cert("node-x"), other.node_key("node-x"))
    with pytest.raises(AuthenticationError):
        channel.submit_proof(job.job_id, forged)
    assert world.coord.store.job(job.job_id).proof is None


def test_a_connection_ends_with_its_certificate(world: World) -> None:
    """A keep-alive connection or websocket does not carry an identity past its certificate's expiry:
    the listener closes it, and reconnecting with that certificate is refused at the handshake (A7)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    register_node(world.settings)
    renew(world.settings)
    short = current_settings(world.settings)
    assert short.cert is not None and short.key is not None
    ctx = client_context(trust_bundle=world.pki.bundle, cert=short.cert, key=short.key)
    bearer = {"authorization": f"Bearer {read_session(world.settings)['session_token']}"}
    url = world.gateway.url.replace("https", "wss") + "/api/events/in"
    with (
        httpx.Client(base_url=world.gateway.url, verify=ctx, headers=bearer, timeout=10) as kept,
        ws_connect(url, ssl=ctx, additional_headers=bearer) as ws,
    ):
        assert kept.get("/api/admin/version").status_code == 200  # positive control
        ws.send('{"type": "auth", "token": null}')
        expires = x509.load_pem_x509_certificate(short.cert.read_bytes()).not_valid_after_utc
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=LIFETIME.total_seconds() + 3)
        assert dt.datetime.now(dt.UTC) >= expires  # closed by the expiry, not before
        with pytest.raises(httpx.HTTPError):
            kept.get("/api/admin/version")


def test_a_renewal_between_pickup_and_the_job_token_fetch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rare race (issue 18): the agent's renewal replaces ``session.json`` while the worker fetches a
    picked-up run's job token — after the session was read, before the certificate is chosen. The token
    and the certificate come from the same read, so the fetch succeeds (bound to the certificate it went
    out under); reading them apart sent the old session's token over the new certificate (401)."""
    import agents.node_client as node_client

    register_node(world.settings)
    node_id = str(read_session(world.settings)["node_id"])
    job = world.coord.store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
    world.coord.store.assign_job(job.job_id, node_id)
    before = current_settings(world.settings).cert
    real = node_client.read_session
    renewed: list[str] = []

    def read_then_renew(settings: AgentSettings) -> dict[str, Any]:
        session = real(settings)
        if not renewed:  # a real renewal over the coordinator, landing right after this read
            renewed.append("once")
            renew(world.settings)
        return session

    monkeypatch.setattr(node_client, "read_session", read_then_renew)
    token = fetch_job_token(world.settings, job.job_id)
    monkeypatch.undo()
    assert renewed and current_settings(world.settings).cert != before  # the renewal did land between
    from agents.credentials import token_thumbprint
    from agents.node_client import cert_thumbprint

    assert before is not None
    assert token_thumbprint(token) == cert_thumbprint(before)
    # The run's channel then reports under the current certificate (its token re-fetched for it).
    channel = CoordinatorChannel(settings=world.settings, job_token=token)
    channel.report_progress(job.job_id, {"kind": "progress", "step": 1, "total": 2})
    assert world.coord.store.job(job.job_id).progress["step"] == 1
