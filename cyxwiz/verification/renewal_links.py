"""Renewal links: a node's old key vouching for its renewed key (issue 17; SPEC A7, A5, F1).

A node certificate is short-lived and renews at half-life under a *new* Ed25519 key, so a new PeerID. At
each renewal the node's *old* key signs a :class:`RenewalLink` naming the new PeerID
(:data:`LINK_DOMAIN`; never a wallet statement, a proof or a handshake). An Ed25519 PeerID *is* its public
key, so a link is checked by its signature alone: no certificate, and nobody's word about which
certificate is whose (the coordinator's records of a node's PeerIDs included), is needed.

One document and one rule for everyone who follows a node across renewals: the payout wallet and the
stake (:mod:`cyxwiz.ledger.payout`, :mod:`cyxwiz.ledger.withdrawal`), the issuer's renewal policy, and the
verifier, which accepts a completion proof signed by a key the run's trainer renewed into
(:func:`check_chain`; :mod:`cyxwiz.verification.binding`). It lives here, beside the proof, because the
verification package imports nothing of the ledger while the ledger imports this.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import AuthorizationError, CyxwizError, ValidationError
from cyxwiz.verification.canonical import canonical_json

__all__ = [
    "LINK_DOMAIN",
    "LINK_FIELD",
    "MAX_LINKS",
    "RenewalLink",
    "RenewalLinkError",
    "SignedRenewalLink",
    "chain_links",
    "check_chain",
    "earlier_keys",
    "linked_keys",
]

#: The link document's version (the wallet statement's is another document with its own).
LINK_VERSION = 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _issued_at(value: object, *, field: str, rule: str) -> int:
    """A signed document's ``issued_at``: Unix milliseconds, an int (not a bool) that JSON keeps exact."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise ValidationError("issued_at must be Unix milliseconds", field=f"{field}.issued_at", rule=rule)
    return value


def _signature(value: object, *, field: str, rule: str) -> str:
    """A signed document's base64 signature, bounded before anything decodes it."""
    if not isinstance(value, str) or len(value) > 128:
        raise ValidationError("signature must be base64", field=f"{field}.signature", rule=rule)
    return value


#: Domain separation for renewal links (never a wallet statement, a proof or a handshake).
LINK_DOMAIN = b"cyxwiz-renewal-link-v1\n"
LINK_FIELD = "renewal_link"
#: The longest chain of renewals followed from a proof's key (a renewal a day: more than a year).
MAX_LINKS = 512


class RenewalLinkError(AuthorizationError):
    """A renewal link not signed by the old key it names, or naming other keys than the renewal's."""

    code = "renewal-link-signature"


@dataclass(frozen=True, kw_only=True)
class RenewalLink:
    """What the node's *old* key signs at renewal: the key ``new_peer_id`` is my successor. With it, a
    wallet statement signed by the new key counts for a proof the old key signed (the job was dispatched
    before the renewal) — and no key the node never vouched for ever does."""

    old_peer_id: str
    new_peer_id: str
    issued_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": LINK_VERSION, "old_peer_id": self.old_peer_id, "new_peer_id": self.new_peer_id,
            "issued_at": self.issued_at,
        }  # fmt: skip

    def message(self) -> bytes:
        return LINK_DOMAIN + canonical_json(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class SignedRenewalLink:
    link: RenewalLink
    #: Base64 of the old key's Ed25519 signature over :meth:`RenewalLink.message`.
    signature: str

    @classmethod
    def sign(cls, *, old_key: Ed25519PrivateKey, new_peer_id: str) -> SignedRenewalLink:
        from cyxwiz.pki.peerid import peer_id

        link = RenewalLink(old_peer_id=peer_id(old_key), new_peer_id=new_peer_id, issued_at=_now_ms())
        return cls(link=link, signature=base64.b64encode(old_key.sign(link.message())).decode())

    @classmethod
    def from_dict(cls, data: object) -> SignedRenewalLink:
        if not isinstance(data, Mapping) or set(data) != {"link", "signature"}:
            raise ValidationError("must be {link, signature}", field=LINK_FIELD, rule="A7")
        body, signature = data["link"], data["signature"]
        if not isinstance(body, Mapping) or set(body) != {"v", "old_peer_id", "new_peer_id", "issued_at"}:
            raise ValidationError(
                "link must be {v, old_peer_id, new_peer_id, issued_at}", field=LINK_FIELD, rule="A7"
            )
        if body["v"] != LINK_VERSION:
            raise ValidationError(f"unknown link version {body['v']!r}", field=f"{LINK_FIELD}.v", rule="A7")
        issued = _issued_at(body["issued_at"], field=LINK_FIELD, rule="A7")
        peers = (body["old_peer_id"], body["new_peer_id"])
        if not all(isinstance(p, str) and 0 < len(p) <= 128 for p in peers):
            raise ValidationError("the link names two PeerIDs", field=LINK_FIELD, rule="A5")
        signature = _signature(signature, field=LINK_FIELD, rule="A7")
        link = RenewalLink(old_peer_id=peers[0], new_peer_id=peers[1], issued_at=issued)
        return cls(link=link, signature=signature)

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link.to_dict(), "signature": self.signature}

    def verify(self) -> RenewalLink:
        """The link, when the old PeerID's own key signed it (an Ed25519 PeerID *is* its public key, so no
        certificate, and nobody's word about which certificate is whose, is needed); else
        :class:`RenewalLinkError`."""
        from cyxwiz.pki.peerid import public_key_from_peer_id

        try:
            public = public_key_from_peer_id(self.link.old_peer_id)
            public.verify(base64.b64decode(self.signature, validate=True), self.link.message())
        except (InvalidSignature, binascii.Error, ValueError, ValidationError):
            raise RenewalLinkError(
                "the renewal link is not signed by the old key it names", field=LINK_FIELD, rule="A7"
            ) from None
        return self.link


def linked_keys(start: str, links_from: Callable[[Collection[str]], Iterable[object]]) -> frozenset[str]:
    """``start`` and every PeerID it renewed into, following links each signed by the older key
    (:meth:`SignedRenewalLink.verify`); ``links_from(peers)`` gives the stored links whose old PeerID is
    one of ``peers`` (whoever stores them: a link that does not verify is skipped, never followed). What a
    *payout* may follow: only the key that did the work vouches for its successors."""
    return _walk(start, links_from, forward=True)


def earlier_keys(start: str, links_to: Callable[[Collection[str]], Iterable[object]]) -> frozenset[str]:
    """``start`` and every PeerID that renewed into it (each link signed by that earlier key);
    ``links_to(peers)`` gives the stored links whose new PeerID is one of ``peers``. What a *slash* may
    follow: a key that vouched for the fraudster's key is the same node, while a link the fraudster's own
    key signs (forward) could name anyone's key."""
    return _walk(start, links_to, forward=False)


def _walk(
    start: str, fetch: Callable[[Collection[str]], Iterable[object]], *, forward: bool
) -> frozenset[str]:
    found, frontier = {start}, {start}
    while frontier and len(found) < MAX_LINKS:
        nxt: set[str] = set()
        for stored in fetch(sorted(frontier)):
            try:
                link = SignedRenewalLink.from_dict(stored).verify()
            except CyxwizError:
                continue
            here, there = (
                (link.old_peer_id, link.new_peer_id) if forward else (link.new_peer_id, link.old_peer_id)
            )
            if here in frontier and there not in found:
                nxt.add(there)
        found |= nxt
        frontier = nxt
    return frozenset(found)


def check_chain(trainer: str, signer: str, links: Iterable[object]) -> int:
    """How many renewals lead from ``trainer`` (the PeerID a run was trained for) to ``signer`` (the key
    that signed its proof) along ``links``, each signed by the older key — :func:`linked_keys`, the rule
    the payout follows, over the links that came with the proof. 0 when they are the same key. Else
    :class:`RenewalLinkError` naming what breaks the chain: a link on it not signed by the old key it
    names (a forged link), or no link onward from the keys reached (a gap, or links of another node's keys,
    which start from no key of the trainer's)."""
    if signer == trainer:
        return 0
    docs = list(links)[: MAX_LINKS + 1]
    if len(docs) > MAX_LINKS:
        raise RenewalLinkError(f"more than {MAX_LINKS} renewal links", field=LINK_FIELD, rule="A7")
    parsed: list[tuple[object, SignedRenewalLink]] = []
    malformed: list[str] = []
    for doc in docs:
        try:
            parsed.append((doc, SignedRenewalLink.from_dict(doc)))
        except ValidationError as exc:
            malformed.append(exc.message)  # skipped like a link that does not verify

    def links_from(peers: Collection[str]) -> list[object]:
        return [doc for doc, link in parsed if link.link.old_peer_id in peers]

    reached = linked_keys(trainer, links_from)
    if signer in reached:
        return len(chain_links(trainer, signer, docs))
    for _, link in parsed:
        if link.link.old_peer_id in reached and not _verifies(link):
            raise RenewalLinkError(
                f"the renewal link from {link.link.old_peer_id} to {link.link.new_peer_id} is not signed "
                "by the old key it names (forged)",
                field=LINK_FIELD,
                rule="A7",
            )
    if malformed:
        reason = f"a renewal link is malformed: {malformed[0]}"
        raise RenewalLinkError(reason, field=LINK_FIELD, rule="A7")
    raise RenewalLinkError(
        f"no chain of renewal links, each signed by the older key, leads from the trainer {trainer} to the "
        f"signer {signer} (it reaches {len(reached)} key(s) and stops: a gap, or another node's links)",
        field=LINK_FIELD,
        rule="A7",
    )


def _verifies(link: SignedRenewalLink) -> bool:
    try:
        link.verify()
    except RenewalLinkError:
        return False
    return True


def chain_links(trainer: str, signer: str, links: Iterable[object]) -> list[dict[str, Any]]:
    """The fewest of ``links`` (stored link documents) that lead from ``trainer`` to ``signer``, each
    signed by the older key, in order: what a renewed node puts in a proof it restates (A7). Empty when
    they are the same key or no such chain exists (the verifier then says what is missing)."""
    verified: list[tuple[RenewalLink, dict[str, Any]]] = []
    for doc in list(links)[:MAX_LINKS]:
        try:
            signed = SignedRenewalLink.from_dict(doc)
        except ValidationError:
            continue
        if _verifies(signed):
            verified.append((signed.link, signed.to_dict()))
    came: dict[str, tuple[str, dict[str, Any]]] = {}
    frontier, seen = [trainer], {trainer}
    while frontier and signer not in seen:
        nxt: list[str] = []
        for link, doc in verified:
            if link.old_peer_id in frontier and link.new_peer_id not in seen:
                seen.add(link.new_peer_id)
                came[link.new_peer_id] = (link.old_peer_id, doc)
                nxt.append(link.new_peer_id)
        frontier = nxt
    path: list[dict[str, Any]] = []
    at = signer
    while at in came:
        at, doc = came[at]
        path.append(doc)
    return path[::-1] if at == trainer else []
