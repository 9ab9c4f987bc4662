"""The control plane's client of the verifier service, over its Unix socket (:mod:`cyxwiz.unix_json`:
one keep-alive connection per calling thread, since every escrow release waits on one co-signing call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.errors import LedgerError
from cyxwiz.ledger.cosign import CosignRequest, refusal_from
from cyxwiz.unix_json import ServiceUnreachable, UnixJsonClient


class RemoteCosigner:
    """The control plane's side: asks the verifier service over its Unix socket."""

    def __init__(self, *, socket_path: Path, pubkey: Pubkey | None = None, timeout_s: float = 600.0) -> None:
        self.socket_path = socket_path
        self._pubkey = pubkey
        self._client = UnixJsonClient(socket_path, timeout_s=timeout_s)

    def pubkey(self) -> Pubkey:
        if self._pubkey is None:
            self._pubkey = Pubkey.from_string(str(self._call("GET", "/v1/pubkey")["pubkey"]))
        return self._pubkey

    def cosign(self, request: CosignRequest) -> Signature:
        return Signature.from_string(str(self._call("POST", "/v1/cosign", request.to_dict())["signature"]))

    def passing(self, job_id: str) -> str | None:
        """The passing attestation the verifier service recorded for the job, if any."""
        value = self._call("GET", f"/v1/verdicts/{job_id}").get("attestation")
        return None if value is None else str(value)

    def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run the verification in the verifier service: ``{"report": ..., "attestation": json}``."""
        return self._call("POST", "/v1/verify", body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            status, payload = self._client.request(method, path, body)
        except ServiceUnreachable as exc:
            from cyxwiz.ledger.rpc import LedgerUnavailableError

            raise LedgerUnavailableError(
                f"the verifier service at {self.socket_path} is unreachable ({exc})", rule="F1"
            ) from None
        if status != 200:
            raise refusal_from(payload.get("error") if isinstance(payload, dict) else None)
        if not isinstance(payload, dict):
            raise LedgerError("the verifier service answered garbage", field="body")
        return payload

    def close(self) -> None:
        self._client.close()
