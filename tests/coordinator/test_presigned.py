"""A presigned object URL dies with its job and its node (issue 18; SPEC A6, C3, D3): a URL issued
before a ban, or before the job's proof froze its outputs, is refused 403 at the coordinator's object
mount, with an audit record, and nothing is stored; the same URL shape for a held job is served."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cyxwiz.audit import MemorySink
from cyxwiz.coordinator.service import CoordinatorHandle, build_coordinator
from cyxwiz.ids import new_job_id
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.storage import LocalObjectStore, MasterKey
from cyxwiz.storage.urlsign import UrlSigner, asgi_app
from cyxwiz.transport.tls import client_context


@pytest.fixture
def world(
    tmp_path: Path,
) -> Iterator[tuple[CoordinatorHandle, UrlSigner, LocalObjectStore, MemorySink, Path]]:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a",))
    master = MasterKey.generate()
    store = LocalObjectStore(root=tmp_path / "store", master_key=master)
    audit = MemorySink()
    coord = build_coordinator(
        cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
        state_dir=tmp_path / "state", audit=audit, max_body=64 << 20,
    )  # fmt: skip
    signer = UrlSigner.from_master_key(master, base_url=f"{coord.url}/objects")
    coord.app.app.mount("/objects", asgi_app(store=store, signer=signer, mount="/objects"))  # type: ignore[attr-defined]
    coord.server.start()
    try:
        yield coord, signer, store, audit, pki.bundle
    finally:
        coord.stop()


def _put(signer: UrlSigner, bundle: Path, job_id: str, data: bytes) -> int:
    digest = hashlib.sha256(data).hexdigest()
    url = signer.sign("PUT", f"jobs/{job_id}/outputs/model.bin", sha256=digest, size=len(data))
    with httpx.Client(verify=client_context(trust_bundle=bundle), timeout=10) as c:
        return c.put(url.url, content=data, headers=dict(url.headers)).status_code


def test_a_presigned_url_dies_with_its_node_and_its_job(world) -> None:  # type: ignore[no-untyped-def]
    coord, signer, store, audit, bundle = world
    node = coord.store.register_node(peer_id="12D3KooWA", subject="CN=node-a", cert_serial="1", hardware={})
    held, frozen = new_job_id(), new_job_id()
    for job_id in (held, frozen):
        coord.store.create_job(user_id="alice", spec={}, duration_s=60, job_id=job_id)
        coord.store.assign_job(job_id, node.node_id)
    assert _put(signer, bundle, held, b"weights") < 300  # positive control: a held job's URL is served
    coord.store.update_job(frozen, status="verifying")  # the proof is in: outputs frozen
    assert _put(signer, bundle, frozen, b"overwrite") == 403
    coord.store.set_node_status(node.node_id, "banned")
    assert _put(signer, bundle, held, b"after the ban") == 403
    assert [i.key for i in store.list("jobs/") if "/outputs/" in i.key] == [f"jobs/{held}/outputs/model.bin"]
    assert store.get_bytes(f"jobs/{held}/outputs/model.bin") == b"weights"
    reasons = [str(e.details) for e in audit.events if e.outcome.value != "success"]
    assert any("its object URLs are dead" in r for r in reasons)
    assert any("the URL's node is banned" in r for r in reasons)
