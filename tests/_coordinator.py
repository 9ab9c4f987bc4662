"""A real coordinator (mTLS on loopback) over a test's dev PKI: how every fixture that needs one starts it.

The PKI gives the server certificate, the trust bundle, the CRL and the CA directory (renewals, revocations);
the test gives where its state lives, the audit sink it reads back, and whatever else it varies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyxwiz.audit import AuditSink
from cyxwiz.coordinator.service import CoordinatorHandle, start_coordinator
from cyxwiz.pki.devpki import DevPKI


def start_dev_coordinator(
    pki: DevPKI, state_dir: Path, audit: AuditSink | None = None, **options: Any
) -> CoordinatorHandle:
    """A started coordinator on ``pki``'s certificates; ``.stop()`` it when done. ``options`` go to
    :func:`cyxwiz.coordinator.service.start_coordinator` (``hooks``, ``node_cert_lifetime``, ...)."""
    return start_coordinator(
        cert=pki.coordinator_cert,
        key=pki.coordinator_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        ca_dir=pki.ca_dir,
        state_dir=state_dir,
        audit=audit,
        **options,
    )
