"""PKI for cyxwiz (SPEC A1–A7): Ed25519 CA hierarchy, CSRs, CRLs, PeerIDs, chain checks, key-file rules.

Modules: :mod:`~cyxwiz.pki.keys` (PKCS#8 Ed25519 key files), :mod:`~cyxwiz.pki.certs` (PEM certificates,
fingerprints, roles), :mod:`~cyxwiz.pki.peerid` (libp2p PeerIDs), :mod:`~cyxwiz.pki.verify` (chain,
validity, constraints, usage, CRL), :mod:`~cyxwiz.pki.ca` (issue, sign CSRs, revoke, CRLs),
:mod:`~cyxwiz.pki.devpki` (a whole development PKI in one call) and :mod:`~cyxwiz.pki.cli`
(``cyxwiz certutil``).
"""
