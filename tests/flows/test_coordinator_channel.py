"""Dispatch picks only healthy, registered, unrevoked nodes (SPEC A6, C2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.errors import ConflictError
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.peerid import peer_id
from tasks.coordinator_channel import SchedulerChannel, node_name

WALLETS = {"node-1": "W1", "node-2": "W2", "node-3": "W3"}


def _register(store: CoordinatorStore, pki: DevPKI, name: str, *, wallet: str | None = "auto") -> str:
    cert = load_certificate(pki.node_cert(name))
    record = store.register_node(
        peer_id=peer_id(cert),
        subject=cert.subject.rfc4514_string(),
        cert_serial=format(cert.serial_number, "x"),
        hardware={},
        wallet=WALLETS[name] if wallet == "auto" else wallet,
    )
    store.heartbeat(record.node_id)
    return str(record.node_id)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SchedulerChannel, DevPKI, CoordinatorStore]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1", "node-2", "node-3"))
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    return SchedulerChannel(store=store, node_wallets=dict(WALLETS), crl=pki.crl), pki, store


def test_assigns_a_healthy_node_and_names_its_queue(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    channel, pki, store = setup
    _register(store, pki, "node-1")
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    assignment = channel.assign(job_id)
    assert assignment["queue"] == assignment["node_id"] == store.list_nodes()[0].node_id
    assert assignment["wallet"] == "W1"
    assert channel.job(job_id)["status"] == "assigned"


def test_revoked_node_gets_no_work_even_with_a_fresh_heartbeat(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    channel, pki, store = setup
    _register(store, pki, "node-2")
    pki.revoke(pki.node_cert("node-2"))
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    with pytest.raises(ConflictError, match="no healthy, unrevoked"):
        channel.assign(job_id, node="node-2")
    assert channel.job(job_id)["status"] == "submitted"  # nothing half-assigned


def test_drained_nodes_are_skipped(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    channel, pki, store = setup
    drained = _register(store, pki, "node-1")
    store.set_node_status(drained, "draining")
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    with pytest.raises(ConflictError):
        channel.assign(job_id)


def test_jobs_submitted_together_spread_over_the_nodes(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    """Issue 21: the idle node wins over a busy one with a fresher heartbeat; among idle ones, the one never
    (or least recently) given a job; so three jobs in a row land on three nodes, and a fourth after one
    is settled goes to the node that has been idle longest."""
    channel, pki, store = setup
    ids = {_register(store, pki, name): name for name in ("node-1", "node-2", "node-3")}

    def submit() -> str:
        return channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)

    first, second, third = (submit() for _ in range(3))
    placed = []
    for job_id in (first, second, third):
        busy = [store.job(j).node_id for j in (first, second, third) if store.job(j).node_id]
        for node_id in busy:
            store.heartbeat(node_id)  # the busy nodes beat last: freshness alone would pick them again
        placed.append(channel.assign(job_id)["name"])
    assert sorted(placed) == ["node-1", "node-2", "node-3"], placed
    store.update_job(second, status="released")  # node of the second job is idle again
    store.update_job(third, status="refunded")  # ... and so is the third's, given a job more recently
    for node_id in ids:
        store.heartbeat(node_id)
    assert channel.assign(submit())["name"] == placed[1]
    # A pin still overrides the spreading (tests, demos): the busy first node takes another job.
    assert channel.assign(submit(), node=placed[0])["name"] == placed[0]


def test_node_name_is_the_certificate_cn() -> None:
    assert node_name("CN=node-7,O=cyxwiz") == "node-7"
    assert node_name("O=cyxwiz,CN=node-8") == "node-8"


def test_a_second_certificate_with_the_same_cn_shares_nothing(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    """Identity is the PeerID (A5): an impostor certified under "node-1" gets neither node-1's queue nor
    its wallet; while the name is ambiguous, nothing is paid by name."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cyxwiz.pki.ca import CertificateAuthority
    from cyxwiz.pki.peerid import peer_id as pid

    channel, pki, store = setup
    honest = _register(store, pki, "node-1", wallet=None)  # paid by the name-keyed configuration
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    first = channel.assign(job_id)
    assert first["queue"] == honest and first["wallet"] == "W1"  # positive control
    key = ed25519.Ed25519PrivateKey.generate()
    twin = CertificateAuthority.from_dir(pki.ca_dir).issue(
        common_name="node-1", role="worker", public_key=key.public_key()
    )
    cert = twin.certificate
    impostor = store.register_node(
        peer_id=pid(cert),
        subject=cert.subject.rfc4514_string(),
        cert_serial=format(cert.serial_number, "x"),
        hardware={},
    )
    store.heartbeat(impostor.node_id)
    assert impostor.node_id != honest
    with pytest.raises(ConflictError):
        channel.assign(channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60), node="node-1")
    # Wallets configured by PeerID stay each node's own, whatever the names.
    channel.node_wallets[store.node(honest).peer_id] = "W1"
    again = channel.assign(
        channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60), node="node-1"
    )
    assert again["node_id"] == again["queue"] == honest and again["wallet"] == "W1"


def test_a_node_without_a_payout_wallet_gets_no_paid_work(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    """F1: a release pays the wallet the node registered under its PeerID; no wallet, no dispatch."""
    _channel, pki, store = setup
    channel = SchedulerChannel(store=store, crl=pki.crl)  # no operator-configured wallets
    _register(store, pki, "node-3", wallet=None)
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    with pytest.raises(ConflictError):
        channel.assign(job_id, node="node-3")
    assert channel.job(job_id)["status"] == "submitted"
    _register(store, pki, "node-3", wallet="W3")
    assert channel.assign(job_id, node="node-3")["wallet"] == "W3"


def test_client_chosen_job_id_cannot_take_an_existing_row(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    channel, _pki, _store = setup
    job_id = channel.create_job(
        user="alice", spec={"job_type": "model"}, duration_s=60, job_id="job-" + "a" * 24
    )
    with pytest.raises(ConflictError):
        channel.create_job(user="bob", spec={"job_type": "model"}, duration_s=60, job_id=job_id)
    assert channel.job(job_id)["user_id"] == "alice"


def test_a_redundant_second_share_never_goes_to_the_first_node(
    setup: tuple[SchedulerChannel, DevPKI, CoordinatorStore],
) -> None:
    """Issue 20 (F1, A5): the second node of a redundant job is another node by node id and PeerID."""
    channel, pki, store = setup
    first = _register(store, pki, "node-1")
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    replica = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    taken = channel.assign(job_id)
    # Attack: only the first node is up; excluded by PeerID (or node id) it is never picked again.
    for exclude in ({taken["peer_id"]}, {first}):
        with pytest.raises(ConflictError, match="outside the nodes this job must avoid"):
            channel.assign(replica, exclude=exclude)
        with pytest.raises(ConflictError):
            channel.assign(replica, node="node-1", exclude=exclude)
    assert channel.job(replica)["status"] == "submitted"  # nothing half-assigned
    # Positive control: a second node takes the share.
    _register(store, pki, "node-2")
    second = channel.assign(replica, exclude={taken["peer_id"], first})
    assert second["peer_id"] != taken["peer_id"] and second["wallet"] == "W2"
    assert {name for _, name in channel.eligible()} == {"node-1", "node-2"}
    assert [name for _, name in channel.eligible(exclude={first})] == ["node-2"]
