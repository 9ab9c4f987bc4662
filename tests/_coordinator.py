"""A real coordinator (mTLS on loopback) over a test's dev PKI: how every fixture that needs one starts it.

The PKI gives the server certificate, the trust bundle and the CRL; renewals and revocations go to an
issuer over the PKI's CA directory (in-process here for speed: the same checks the issuer service runs;
tests/issuer and the red-team suite run it as its own process, as the stack does — issue 17). The test
gives where its state lives, the audit sink it reads back, and whatever else it varies.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cyxwiz.audit import AuditSink
from cyxwiz.coordinator.service import CoordinatorHandle, start_coordinator
from cyxwiz.issuer.policy import DEFAULT_LIFETIME, NodeCertIssuer
from cyxwiz.pki.devpki import DevPKI


def start_dev_coordinator(
    pki: DevPKI,
    state_dir: Path,
    audit: AuditSink | None = None,
    *,
    node_cert_lifetime: dt.timedelta = DEFAULT_LIFETIME,
    **options: Any,
) -> CoordinatorHandle:
    """A started coordinator on ``pki``'s certificates; ``.stop()`` it when done. ``options`` go to
    :func:`cyxwiz.coordinator.service.start_coordinator` (``hooks``, ``cert_issuer``, ...);
    ``node_cert_lifetime`` is the default issuer's."""
    options.setdefault("cert_issuer", NodeCertIssuer.from_dir(pki.ca_dir, lifetime=node_cert_lifetime))
    return start_coordinator(
        cert=pki.coordinator_cert,
        key=pki.coordinator_key,
        trust_bundle=pki.bundle,
        crl=pki.crl,
        state_dir=state_dir,
        audit=audit,
        **options,
    )
