"""The issuer: the one process that holds the issuing CA's key (issue 17; SPEC A1, A3, A6, A7, F1).

The coordinator faces nodes and users; a key it holds is a key an attacker who owns it holds. With the CA
key it could mint any certificate — a ``verifier`` whose passing reports release escrow, another node's
name, an admin — so it holds none. This process does exactly two things for it, over a 0600 Unix socket:
renew a node's worker certificate (:mod:`cyxwiz.issuer.policy` decides) and revoke one with the node's
earlier certificates under the same name, signing a CRL (:mod:`cyxwiz.issuer.revocation` decides). A
compromised coordinator can then revoke nodes' worker certificates only — never the verifier's, the
gateway's, its own, a user's or another CA's — and each ask is audited here. Those other certificates are
revoked by an operator on the issuer's host only (``cyxwiz certutil revoke``, then ``gen-crl``).
"""
