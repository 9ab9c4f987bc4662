"""A verifier service killed -9 and restarted during verification does not fail an honest job (issue 21;
SPEC F1, F2).

Real ledger service (LiteSVM behind JSON-RPC), the verifier service as its own process (with the stand-in
verification hook of ``tests.ledger._verifier_hook``, which counts the verifications it runs), and the
lifecycle's own call, :func:`tasks.services.attested_verification`. The verifier is killed mid-verification
and started again: the lifecycle's request is sent again once it is back and the job's escrow releases.
A request repeated for a job the verifier already judged gets the same verdict back, also across a restart:
no second verification, verdict or audit record.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.ledger.attestation import ReportAttestation
from cyxwiz.ledger.config import open_ledger
from cyxwiz.ledger.embedded import DemoLedger
from cyxwiz.ledger.ledger import EscrowLedger
from cyxwiz.ledger.store import EscrowState
from cyxwiz.ledger.verifier_client import RemoteCosigner
from cyxwiz.ledger.verifier_service import VerifierProcess, start_verifier_service
from tasks import services
from tasks.config import ENV_VAR, ControlPlaneConfig
from tasks.control import JobRequest
from tests.ledger._verifier_hook import CALLS_ENV, SLOW_ENV
from tests.ledger.conftest import NODE_PEER, REPO


@pytest.fixture
def plane(demo: DemoLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The control plane's config naming the demo ledger (and so its verifier socket)."""
    from cyxwiz.pki.devpki import build_dev_pki

    config = ControlPlaneConfig(
        home=tmp_path, pki_root=build_dev_pki(tmp_path / "cp-pki").root, ledger_config=demo.config_path,
        store_root=tmp_path / "store", audit_dir=tmp_path / "audit",
    )  # fmt: skip
    config.to_file(tmp_path / "control-plane.json")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "control-plane.json"))
    services.reset()
    yield
    services.reset()


class Verifier:
    """The verifier service process, killable and restartable at the same socket."""

    def __init__(self, demo: DemoLedger, home: Path) -> None:
        self.demo, self.home, self.calls = demo, home, home / "verifications.log"
        self.process: VerifierProcess | None = None

    def start(self, *, slow_s: float = 0.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CYXWIZ_LEDGER_PASSPHRASE"}
        env |= {"PYTHONPATH": str(REPO), **self.demo.verifier_env(), CALLS_ENV: str(self.calls)}
        env[SLOW_ENV] = str(slow_s)
        self.process = start_verifier_service(
            config_path=self.demo.config_path, state_dir=self.home / "state", env=env,
            module="tests.ledger._verifier_hook",
        )  # fmt: skip

    def kill(self) -> None:
        """kill -9: no shutdown; a request in flight dies with the process."""
        assert self.process is not None and self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.stop()  # reaps it

    def verifications(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


@pytest.fixture
def verifier(demo: DemoLedger, tmp_path: Path) -> Iterator[Verifier]:
    service = Verifier(demo, tmp_path / "verifier")
    try:
        yield service
    finally:
        if service.process is not None:
            service.process.stop()


def _lock(demo: DemoLedger, job_id: str) -> tuple[EscrowLedger, dict[str, Any], str]:
    ledger = open_ledger(demo.config)
    ledger.create(job_id=job_id, user=demo.user, amount=3 * demo.minimum_payment)
    ledger.assign(job_id=job_id, node_wallet=demo.node.pubkey(), node_peer_id=NODE_PEER)
    dispatched = {"assignment": {"peer_id": NODE_PEER, "wallet": str(demo.node.pubkey()), "node_id": "n"}}
    return ledger, dispatched, ledger.status(job_id=job_id).escrow_account


def _request(job_id: str) -> JobRequest:
    return JobRequest(
        job_id=job_id, user="alice", payment=1, dataset="sklearn:digits", training_doc={},
        memory_mb=128, wall_seconds=5,
    )  # fmt: skip


@pytest.mark.slow
def test_verification_goes_through_a_verifier_killed_mid_verification(
    demo: DemoLedger, plane: None, verifier: Verifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cyxwiz.retry")
    ledger, dispatched, escrow = _lock(demo, "job-restart")
    verifier.start(slow_s=60.0)  # the first verification is still running when the process is killed
    answers: list[Any] = []
    lifecycle = threading.Thread(
        target=lambda: answers.append(
            services.attested_verification(
                request=_request("job-restart"), dispatched=dispatched, escrow=escrow
            )
        )
    )
    lifecycle.start()
    deadline = time.monotonic() + 60
    while verifier.verifications() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert verifier.verifications() == 1  # the verification is under way ...
    verifier.kill()  # ... and dies with the verifier
    time.sleep(2.0)  # nothing listens on the socket for a while
    verifier.start()
    lifecycle.join(timeout=180)
    assert not lifecycle.is_alive() and answers, "the lifecycle's verification did not come back"
    report, attestation = answers[0]
    assert report.passed and ReportAttestation.parse(attestation).verdict == "pass"
    assert verifier.verifications() == 2  # the killed one, and the one that answered
    assert any("verification of job-restart" in r.getMessage() for r in caplog.records)
    # The honest job is paid: the verdict the restarted verifier signed releases its escrow.
    record = ledger.release(job_id="job-restart", node_wallet=demo.node.pubkey(), report=attestation)
    assert record.state is EscrowState.RELEASED


@pytest.mark.slow
def test_a_repeated_request_gets_the_verdict_already_given_across_a_restart(
    demo: DemoLedger, verifier: Verifier
) -> None:
    """Same job, node, wallet and escrow: the same signed verdict, one verification, one verdict record
    (F2) — even when the repeat asks for another outcome; a refusal (no such route) is not a verdict."""
    _ledger, dispatched, escrow = _lock(demo, "job-twice")
    verifier.start()
    assert verifier.process is not None
    wallet = dispatched["assignment"]["wallet"]
    body = {"job_id": "job-twice", "node_peer_id": NODE_PEER, "node_wallet": wallet, "escrow": escrow}
    remote = RemoteCosigner(socket_path=verifier.process.socket_path)
    first = remote.verify({**body, "verdict": "fraud"})
    again = remote.verify({**body, "verdict": "pass"})
    assert again == first and ReportAttestation.parse(first["attestation"]).verdict == "fraud"
    remote.close()
    verifier.kill()
    verifier.start()
    remote = RemoteCosigner(socket_path=verifier.process.socket_path)
    assert remote.verify({**body, "verdict": "pass"}) == first
    assert remote.passing("job-twice") is None  # no passing verdict was ever recorded for it
    remote.close()
    assert verifier.verifications() == 1
