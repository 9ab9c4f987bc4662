"""A coordinator in its own process for restart tests: ``python -m tests.agents._coordinator_proc DIR PORT``.

The production wiring without its Prefect and ledger parts (:func:`tasks.hooks.production_coordinator`
probes both): the real :class:`~tasks.hooks.PrefectHooks` proof check at the door, a local object store
whose presigned URLs the coordinator serves under ``/objects``, the job rows in ``DIR/state``. It binds
``PORT`` (so a restart comes back at the same address), writes ``DIR/ready`` and serves until killed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path


def main(home: Path, port: int) -> None:
    from cyxwiz.coordinator.service import build_coordinator
    from cyxwiz.issuer.policy import NodeCertIssuer
    from cyxwiz.pki.devpki import build_dev_pki
    from cyxwiz.storage.crypto import MasterKey
    from cyxwiz.storage.local import LocalObjectStore
    from cyxwiz.storage.urlsign import UrlSigner, asgi_app
    from tasks.hooks import PrefectHooks

    pki = build_dev_pki(home / "pki", nodes=("node-a",))
    master_file = home / "master.key"
    if not master_file.exists():
        MasterKey.generate().write(master_file)
    master = MasterKey.from_file(master_file)
    store = LocalObjectStore(root=home / "store", master_key=master)
    signer = UrlSigner.from_master_key(master, base_url=f"https://127.0.0.1:{port}/objects")
    handle = build_coordinator(
        cert=pki.coordinator_cert, key=pki.coordinator_key, trust_bundle=pki.bundle, crl=pki.crl,
        cert_issuer=NodeCertIssuer.from_dir(pki.ca_dir), state_dir=home / "state", port=port,
        max_body=1 << 20,
        hooks=PrefectHooks(store=store, signer=signer, start_flow_runs=False),
    )  # fmt: skip
    handle.app.app.mount(  # type: ignore[attr-defined]
        "/objects", asgi_app(store=store, signer=signer, mount="/objects")
    )
    handle.server.start()
    (home / "ready").write_text(handle.url)
    threading.Event().wait()  # the server's thread serves until the test kills this process


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
