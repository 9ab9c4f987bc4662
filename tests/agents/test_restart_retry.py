"""A coordinator killed -9 and restarted mid-job does not fail an honest node's job (issue 21; SPEC F1, F2).

The coordinator runs in its own process (``tests.agents._coordinator_proc``: the real proof check at the
door, a local object store behind presigned URLs, its rows in SQLite), the node side is the flow run's
:class:`~agents.node_client.CoordinatorChannel`. The coordinator is killed with SIGKILL and started
again on the same port a few seconds later, while the node uploads its outputs and submits its proof:
both go through once it is back. A proof sent again after its answer was lost is accepted once; another
proof, or a job token used for another job, is refused (403) and never sent twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from agents.node_client import CoordinatorChannel, fetch_job_token, read_session, register_node
from agents.settings import AgentSettings
from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import AuthenticationError
from cyxwiz.pki.devpki import build_dev_pki

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CoordinatorProcess:
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        ready = self.home / "ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with (self.home / "coordinator.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.agents._coordinator_proc", str(self.home), str(self.port)],
                cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log_tail = (self.home / "coordinator.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"the coordinator did not start: {log_tail}")
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown, open connections die with the process."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    @property
    def store(self) -> CoordinatorStore:
        return CoordinatorStore.from_url(f"sqlite:///{self.home / 'state' / 'coordinator.db'}")


@dataclass
class World:
    coordinator: CoordinatorProcess
    settings: AgentSettings
    job_id: str
    channel: CoordinatorChannel
    outputs: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    home = tmp_path / "coord"
    home.mkdir()
    pki = build_dev_pki(home / "pki", nodes=("node-a",))
    coordinator = CoordinatorProcess(home=home, port=_free_port())
    coordinator.start()
    try:
        settings = AgentSettings(
            node_name="node-a", cert=pki.node_cert("node-a"), key=pki.node_key("node-a"),
            ca_bundle=pki.bundle, crl=pki.crl, coordinator_url=f"https://127.0.0.1:{coordinator.port}",
            work_root=tmp_path / "agent",
        )  # fmt: skip
        register_node(settings)
        store = coordinator.store
        job = store.create_job(user_id="alice", spec={"job_type": "train"}, duration_s=600)
        store.assign_job(job.job_id, str(read_session(settings)["node_id"]))
        channel = CoordinatorChannel(settings=settings, job_token=fetch_job_token(settings, job.job_id))
        outputs = tmp_path / "out"
        outputs.mkdir()
        (outputs / "model.bin").write_bytes(b"weights of an honest run")
        yield World(coordinator, settings, job.job_id, channel, outputs)
    finally:
        coordinator.kill()


def _proof(world: World, *, content: bytes | None = None) -> bytes:
    from cyxwiz.pki.certs import fingerprint_sha256, load_certificate
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.proof import build_proof, sign_proof

    assert world.settings.cert is not None and world.settings.key is not None
    directory = world.outputs
    if content is not None:
        directory = world.outputs.parent / "other"
        directory.mkdir(exist_ok=True)
        (directory / "model.bin").write_bytes(content)
    now = dt.datetime.now(dt.UTC)
    cert = load_certificate(world.settings.cert)
    proof = build_proof(
        job_id=world.job_id, job_spec_sha256="0" * 64, output_dir=directory, node_peer_id=peer_id(cert),
        cert_fingerprint_sha256=fingerprint_sha256(cert).hex(), token_jti="run-token", started_at=now,
        finished_at=now,
    )  # fmt: skip
    return sign_proof(proof, load_private_key(world.settings.key)).to_json()


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cyxwiz.retry"]


@pytest.mark.slow
def test_upload_and_proof_go_through_a_coordinator_killed_and_restarted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cyxwiz.retry")
    world.channel.report_progress(world.job_id, {"kind": "progress", "step": 1, "total": 2})  # control
    proof = _proof(world)
    world.coordinator.kill()
    down = 3.0
    restarter = threading.Timer(down, world.coordinator.start)
    restarter.start()
    try:
        # The upload starts while nothing listens on the coordinator's port and goes through once it is back.
        world.channel.upload_output(world.job_id, "model.bin", world.outputs / "model.bin")
        world.channel.report_progress(world.job_id, {"kind": "progress", "step": 2, "total": 2})
        world.channel.submit_proof(world.job_id, proof)
    finally:
        restarter.join()
    assert any("upload output model.bin: ConnectError" in m for m in _retries(caplog)), _retries(caplog)
    job = world.coordinator.store.job(world.job_id)
    assert job.status == "verifying"
    assert job.proof is not None and job.proof["proof"]["job_id"] == world.job_id
    stored = world.coordinator.home / "store"
    found = [p for p in stored.rglob("*") if p.is_file() and "model.bin" in p.name and "outputs" in str(p)]
    assert found, sorted(str(p.relative_to(stored)) for p in stored.rglob("*"))


@pytest.mark.slow
def test_a_resent_proof_is_accepted_once_and_another_proof_is_refused(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The node cannot tell a lost answer from a lost request: the same proof again is the same success;
    a different proof for a job whose proof is in meets a dead job token (403, C3): final, not retried."""
    caplog.set_level(logging.WARNING, logger="cyxwiz.retry")
    proof = _proof(world)
    world.channel.submit_proof(world.job_id, proof)
    first = world.coordinator.store.job(world.job_id)
    world.channel.submit_proof(world.job_id, proof)  # as after a response lost to a restart
    again = world.coordinator.store.job(world.job_id)
    assert again.status == first.status == "verifying"
    assert again.proof == first.proof
    other = _proof(world, content=b"other weights")
    assert hashlib.sha256(other).digest() != hashlib.sha256(proof).digest()
    with pytest.raises(AuthenticationError, match="403"):
        world.channel.submit_proof(world.job_id, other)
    assert world.coordinator.store.job(world.job_id).proof == first.proof
    assert _retries(caplog) == []


@pytest.mark.slow
def test_a_403_is_final_and_never_retried(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A job token used for a job the node does not hold is refused (403) once: no retry, nothing stored.
    Positive control: the same channel reports on its own job."""
    caplog.set_level(logging.WARNING, logger="cyxwiz.retry")
    store = world.coordinator.store
    elsewhere = store.create_job(user_id="bob", spec={"job_type": "train"}, duration_s=600)
    with pytest.raises(AuthenticationError, match="403"):
        world.channel.submit_proof(elsewhere.job_id, _proof(world))
    assert store.job(elsewhere.job_id).proof is None
    assert _retries(caplog) == []
    world.channel.report_progress(world.job_id, {"kind": "progress", "step": 1, "total": 2})
    assert (store.job(world.job_id).progress or {}).get("step") == 1


@pytest.mark.slow
def test_a_coordinator_certificate_that_does_not_verify_is_final(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose certificate does not chain to the node's trust bundle (a man in the middle, threat I)
    is a refusal, not an outage: raised at once, never retried, nothing sent."""
    caplog.set_level(logging.WARNING, logger="cyxwiz.retry")
    other = build_dev_pki(tmp_path / "other", nodes=("node-a",))
    fooled = replace(world.settings, ca_bundle=other.bundle)
    channel = CoordinatorChannel(settings=fooled, job_token=world.channel._token)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        channel.report_progress(world.job_id, {"kind": "progress", "step": 1, "total": 2})
    assert _retries(caplog) == []
    assert not world.coordinator.store.job(world.job_id).progress  # nothing reached the coordinator
