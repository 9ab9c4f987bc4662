"""Escrow authority keys in a key source (SPEC F1, A7): a Solana signature is Ed25519 over the message.

A Solana transaction's signatures are plain Ed25519 signatures over the serialised message, so a key kept
in a PKCS#11 token signs one directly: :class:`SourceSigner` signs the message bytes through the
:class:`~cyxwiz.keys.source.KeySource` and hands ``solders`` a ``Presigner`` holding that signature (solders
checks it against the message before it goes into the transaction).
"""

from __future__ import annotations

from solders.message import Message
from solders.presigner import Presigner
from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.keys.source import KeySource, checked_signature, public_raw


class SourceSigner:
    """A Solana signer whose private key lives in a :class:`KeySource` (file or PKCS#11 token)."""

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self._pubkey = Pubkey.from_bytes(public_raw(source))

    def pubkey(self) -> Pubkey:
        return self._pubkey

    def presigner(self, message: Message) -> Presigner:
        signature = checked_signature(self.source, bytes(message))
        return Presigner(self._pubkey, Signature.from_bytes(signature))

    def __repr__(self) -> str:
        return f"SourceSigner({self._pubkey}, {self.source.uri!r})"
