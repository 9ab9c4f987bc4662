"""Request and answer bodies of the coordinator API (strict: unknown fields are refused, SPEC G)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

#: An object name under a job's input or output prefix: relative, no ``..`` (E5).
OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,7}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hardware(_Strict):
    gpus: int = Field(0, ge=0, le=64)
    gpu_model: str | None = Field(None, max_length=128)
    gpu_memory_mb: int = Field(0, ge=0, le=10_000_000)
    cpu_cores: int = Field(1, ge=1, le=4096)
    memory_mb: int = Field(1024, ge=1, le=100_000_000)
    #: The most open jobs the node takes (its GPUs); the scheduler never assigns it more (issue 21, C3).
    #: None: no cap, more jobs wait in its queue.
    max_jobs: int | None = Field(None, ge=1, le=4096)


class RegisterRequest(_Strict):
    hardware: Hardware
    #: Optional, for clients that send it: must match the node the certificate identifies (C2).
    node_id: str | None = Field(None, max_length=64)
    #: Optional, as node_id: a body naming another PeerID than the certificate's is refused (C2).
    peer_id: str | None = Field(None, max_length=128)
    #: The payout wallet (base58 public key) bound to the certificate's PeerID; releases pay only it (F1).
    wallet: str | None = Field(None, pattern=r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
    #: The node's statement of that wallet signed by its certificate key (cyxwiz.ledger.payout): required
    #: with ``wallet``; the coordinator stores it, the verifier service believes only it (issue 17, F1).
    wallet_statement: dict[str, JsonValue] | None = None


class HeartbeatRequest(_Strict):
    node_id: str | None = Field(None, max_length=64)
    load: dict[str, float] = Field(default_factory=dict, max_length=32)


class RenewRequest(_Strict):
    #: PEM CSR made with a new Ed25519 key, same common name as the current certificate.
    csr: str = Field(max_length=8192)
    #: The node's payout wallet statement signed by the new key, so its wallet outlives the old
    #: certificate (issue 17, F1); checked against the certificate issued here.
    wallet_statement: dict[str, JsonValue] | None = None
    #: The current (old) key's signed "the new key is mine" (issue 17, F1, A7): what lets the verifier
    #: pay a proof of the old key to the wallet the new key states. Required.
    renewal_link: dict[str, JsonValue] | None = None


class RefreshRequest(_Strict):
    refresh_token: str = Field(max_length=8192)


class ProgressRequest(_Strict):
    step: int = Field(ge=0)
    total: int = Field(ge=1)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)


class CompletionRequest(_Strict):
    proof: dict[str, JsonValue]


class UrlRequest(_Strict):
    kind: Literal["input", "output"]
    name: str = Field(max_length=512)
    method: Literal["GET", "PUT"] = "GET"
    #: An output PUT URL is bound to the content it may carry (D3): hash and size are required for PUT.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(None, ge=0, le=1 << 40)


class SubmitRequest(_Strict):
    spec: dict[str, JsonValue]


class DisputeRequest(_Strict):
    """A job owner's dispute within the window (issue 20, F1): a committed segment that does not reproduce.
    ``testset`` is accepted here only to be refused with its rule (and audited) by the hold book: a test
    set picked after the model was delivered is no evidence (``holds.TESTSET_REFUSED``)."""

    kind: Literal["segment", "testset"]
    segment_start: int | None = Field(None, ge=0, le=2**53)
    testset_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    reason: str = Field("", max_length=500)


class DatasetUploadRequest(_Strict):
    """A local dataset file the user is about to upload: the PUT is bound to exactly this (G1, D3)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1, le=1 << 40)
    suffix: Literal[".npz", ".csv", ".bin"] = ".bin"


class AdminActionRequest(_Strict):
    reason: str = Field("unspecified", max_length=256)


class ConfigRequest(_Strict):
    value: JsonValue


class TokenPair(BaseModel):
    session_token: str
    refresh_token: str
    session_id: str
    expires_at: str


class FundingRequest(_Strict):
    """The lock the job's owner signed, for a job whose lifecycle run waits for it (F1)."""

    funding: dict[str, JsonValue] = Field(max_length=8)
