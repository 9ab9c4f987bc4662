"""The verifier service's co-signing, called in the test process through exactly what its socket serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from solders.signature import Signature

from cyxwiz.ledger.cosign import CosignRequest, refusal_from
from cyxwiz.ledger.verifier_service import VerifierService


@dataclass
class ServiceCosigner:
    """The ledger's side of the verifier service: what its Unix socket serves, called in this process."""

    service: VerifierService

    def pubkey(self) -> Any:
        return self.service.keypair.pubkey()

    def cosign(self, request: CosignRequest) -> Signature:
        status, body = self.service.handle("POST", "/v1/cosign", request.to_dict())
        if status != 200:
            raise refusal_from(body["error"])
        return Signature.from_string(str(body["signature"]))
