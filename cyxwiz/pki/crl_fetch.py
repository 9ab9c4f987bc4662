"""Fetch each federated organization's CRL file from where it publishes it (SPEC A7, A6).

For every organization of the trust policy with a ``crl_url``, the published file is downloaded and checked
exactly as the listeners will check it (every CRL signed by a CA that organization holds, none older than
the CRL in force) before it atomically replaces the organization's ``crl`` file, which the listeners
hot-reload. A download that fails or does not pass leaves the file in force untouched, so an unreachable or
hostile publisher can at worst let that organization's CRL go stale — which refuses that organization's
nodes, and nobody else's. CRLs are signed, so plain HTTP is acceptable (as for RFC 5280 distribution
points); the body is capped.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path

from cyxwiz.pki.trust_orgs import Organization, load_org_crls
from cyxwiz.pki.trust_policy import TrustPolicy

#: Larger than a 100,000-entry CRL (~3.5 MB), small enough that a hostile server cannot fill the disk.
MAX_CRL_BYTES = 32 << 20


def fetch_crls(policy: TrustPolicy, *, timeout: float = 10.0) -> dict[str, str]:
    """Fetch every organization's published CRLs; returns ``{organization: outcome}`` (never raises)."""
    return {o.name: fetch_org_crls(o, timeout=timeout) for o in policy.organizations if o.crl_url}


def fetch_org_crls(org: Organization, *, timeout: float = 10.0) -> str:
    import httpx

    assert org.crl_url is not None and org.crl_path is not None
    try:
        with httpx.stream("GET", org.crl_url, timeout=timeout, follow_redirects=False) as reply:
            if reply.status_code != 200:
                return f"refused: HTTP {reply.status_code}"
            data = bytearray()
            for chunk in reply.iter_bytes():
                data += chunk
                if len(data) > MAX_CRL_BYTES:
                    return f"refused: larger than {MAX_CRL_BYTES} bytes"
    except httpx.HTTPError as exc:
        return f"refused: {type(exc).__name__}"
    if org.crl_path.exists() and org.crl_path.read_bytes() == data:
        return "unchanged"
    tmp = org.crl_path.parent / f".{org.crl_path.name}.{secrets.token_hex(4)}.fetch"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        in_force = load_org_crls(org) if org.crl_path.exists() else None
        candidate = load_org_crls(
            dataclasses.replace(org, crl_path=tmp),
            previous=in_force if in_force is not None and in_force.error is None else None,
        )
        if candidate.error is not None:
            return f"refused: {candidate.error}"
        os.replace(tmp, org.crl_path)
        return "updated"
    finally:
        Path(tmp).unlink(missing_ok=True)
