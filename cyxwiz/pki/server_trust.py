"""What a client may trust to verify the server it talks to: one organization's CAs (SPEC A7, A3, I: MITM).

A node agent (or a user's client) verifies the coordinator and the gateway against its CA bundle. In a
federation the listeners trust every organization's CAs and the trust policy limits what each may
certify; a client has no such policy. With the federation bundle, org B (allowed to certify workers only)
could issue a server certificate for the coordinator's name and stand in the middle of org A's nodes. So
a bundle used to verify servers must hold the control plane organization's CAs only:

* every root in it must be linked to the others by a cross-certificate of the root itself inside the
  bundle (a root rollover keeps the old and the new root, one certifying the other); independent roots
  — e.g. ``cyxwiz certutil policy-bundle``'s output — are refused (rule ``A7/server-trust``);
* only CA certificates: a leaf in a trust store would be a trust anchor by itself (rule ``A3``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509

from cyxwiz.errors import CertificateError
from cyxwiz.pki.certs import is_ca, is_self_signed, load_certificates
from cyxwiz.pki.trust_orgs import raw_key
from cyxwiz.pki.verify import _signed_by, describe

RULE = "A7/server-trust"


class ServerTrustError(CertificateError):
    """A CA bundle that would let more than one organization vouch for a server."""

    code = "server-trust"


def _certifies_root(cas: list[x509.Certificate], issuer: x509.Certificate, root: x509.Certificate) -> bool:
    """True when the bundle holds a certificate of ``root`` itself (its subject and key) by ``issuer``."""
    key = raw_key(root)
    return any(
        c.subject == root.subject and raw_key(c) == key and not is_self_signed(c) and _signed_by(c, issuer)
        for c in cas
    )


def root_groups(cas: list[x509.Certificate]) -> list[list[x509.Certificate]]:
    """The bundle's roots, grouped by cross-certification of the roots themselves (one group: one org)."""
    roots = [c for c in cas if is_self_signed(c)]
    groups: list[list[x509.Certificate]] = []
    for root in roots:
        linked = [
            g
            for g in groups
            if any(_certifies_root(cas, r, root) or _certifies_root(cas, root, r) for r in g)
        ]
        merged = [root]
        for group in linked:
            merged.extend(group)
            groups.remove(group)
        groups.append(merged)
    return groups


def require_one_organization(bundle: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Refuse a server-verification bundle holding leaves or several organizations' roots; its CAs."""
    path = str(Path(bundle))
    cas = load_certificates(bundle)
    leaves = [c for c in cas if not is_ca(c)]
    if leaves:
        raise ServerTrustError(
            f"the CA bundle holds a non-CA certificate ({describe(leaves[0])}): it would be a trust anchor",
            path=path,
            rule="A3",
        )
    groups = root_groups(cas)
    if len(groups) > 1:
        names = "; ".join(describe(g[0]) for g in groups)
        raise ServerTrustError(
            f"the CA bundle holds {len(groups)} independent roots ({names}): any of them could certify a "
            "server in the control plane's name",
            path=path,
            rule=RULE,
            hint="verify servers against the control plane organization's own bundle, never the federation "
            "bundle (cyxwiz certutil policy-bundle) the listeners use",
        )
    return cas


__all__ = ["RULE", "ServerTrustError", "require_one_organization", "root_groups"]
