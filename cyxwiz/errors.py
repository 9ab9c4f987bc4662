"""The one error hierarchy of cyxwiz.

Every refusal the library makes is a :class:`CyxwizError`. Callers (the CLI, the HTTP API, Prefect
tasks) catch that single type and turn it into one clear line, a problem+json body or a failed state;
nothing below it ever needs a traceback to be understood.

Each error names what was wrong (``field`` or ``path``) and which rule refused it (``rule``, usually
a SPEC.md id such as ``"A2"``), and may carry a ``hint`` telling the user how to fix it.
Area modules may subclass these further; they must derive from a class defined here.
"""

from __future__ import annotations

from typing import ClassVar


class CyxwizError(Exception):
    """Base of every error cyxwiz raises on purpose."""

    #: Short machine-readable code (stable; used in problem+json ``type`` and audit details).
    code: ClassVar[str] = "cyxwiz-error"
    #: HTTP status an API maps this error to.
    http_status: ClassVar[int] = 400

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        path: str | None = None,
        rule: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.path = path
        self.rule = rule
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        if self.field:
            parts.append(f"{self.field}: ")
        parts.append(self.message)
        if self.rule:
            parts.append(f" [rule {self.rule}]")
        text = "".join(parts)
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, str | None]:
        """Serialisable view for JSON output and problem+json bodies (never contains secrets)."""
        return {
            "code": self.code,
            "message": self.message,
            "field": self.field,
            "path": self.path,
            "rule": self.rule,
            "hint": self.hint,
        }


# --- configuration and input ----------------------------------------------------------------------


class ConfigError(CyxwizError):
    """Configuration (env var, file, block) is missing or invalid."""

    code = "config"


class ValidationError(CyxwizError):
    """User or network input broke a rule (SPEC G)."""

    code = "validation"
    http_status = 422


class NotFoundError(CyxwizError):
    """A named thing (job, node, escrow, object, key) does not exist."""

    code = "not-found"
    http_status = 404


class ConflictError(CyxwizError):
    """The operation conflicts with the current state (e.g. an escrow already moved)."""

    code = "conflict"
    http_status = 409


# --- PKI (SPEC A) ------------------------------------------------------------------------------------


class PKIError(CyxwizError):
    """Certificates, keys, CRLs and chains."""

    code = "pki"


class KeyFormatError(PKIError):
    """A private key is not an unencrypted-or-encrypted PKCS#8 PEM Ed25519 key (A2)."""

    code = "pki-key-format"


class KeyTypeError(PKIError):
    """A key or certificate uses an algorithm other than Ed25519 (A2)."""

    code = "pki-key-type"


class KeyPermissionError(PKIError):
    """A private key file is readable by group or others (A4)."""

    code = "pki-key-permission"


class CertificateError(PKIError):
    """A certificate is malformed or breaks a certificate rule."""

    code = "pki-certificate"
    http_status = 401


class SelfSignedCertificateError(CertificateError):
    """A leaf certificate is self-signed (A3)."""

    code = "pki-self-signed"


class CertificateExpiredError(CertificateError):
    code = "pki-expired"


class CertificateNotYetValidError(CertificateError):
    code = "pki-not-yet-valid"


class CertificateRevokedError(CertificateError):
    code = "pki-revoked"


class ChainError(CertificateError):
    """No path from the certificate to a trusted root, or a link in the path breaks a rule."""

    code = "pki-chain"


class CertificateUsageError(CertificateError):
    """Key usage / EKU / basic constraints do not allow this use (e.g. a CA cert used as a leaf)."""

    code = "pki-usage"


class CRLError(PKIError):
    """A CRL is malformed, not signed by its CA, or past its nextUpdate (A6)."""

    code = "pki-crl"


# --- tokens and authorization (SPEC B, C) -------------------------------------------------------------


class AuthenticationError(CyxwizError):
    """Who is calling could not be established."""

    code = "unauthenticated"
    http_status = 401


class TokenError(AuthenticationError):
    """A token is malformed, forged, of the wrong kind, expired, replayed or bound elsewhere (B)."""

    code = "token-invalid"


class TokenExpiredError(TokenError):
    code = "token-expired"


class TokenReplayError(TokenError):
    code = "token-replayed"


class TokenBindingError(TokenError):
    """A certificate-bound token presented with another certificate (B5, RFC 8705)."""

    code = "token-binding"


class AuthorizationError(CyxwizError):
    """The caller is known but not allowed to do this (C)."""

    code = "forbidden"
    http_status = 403


class RateLimitError(CyxwizError):
    code = "rate-limited"
    http_status = 429


class UnavailableError(CyxwizError):
    """A service did not answer (down, restarting) or said it could not act now (502/503/504): nothing
    was decided about the request, so a caller may retry it (:mod:`cyxwiz.retry`)."""

    code = "unavailable"
    http_status = 503


class UpstreamError(UnavailableError):
    """The service behind a proxy (the gateway's Prefect API) did not answer: 502, which clients retry."""

    code = "upstream-unavailable"
    http_status = 502
    #: Not a decision about the caller: nothing to audit as a refusal.
    audited = True


# --- audit (SPEC H) ---------------------------------------------------------------------------------


class AuditError(CyxwizError):
    code = "audit"


class AuditIntegrityError(AuditError):
    """The audit chain is broken: an edited, deleted, reordered or inserted record or day (H4)."""

    code = "audit-integrity"


# --- sandbox and job bridge (SPEC E) ----------------------------------------------------------------


class SandboxError(CyxwizError):
    code = "sandbox"


class SandboxUnavailableError(SandboxError):
    """The requested backend cannot run on this host."""

    code = "sandbox-unavailable"


class LimitExceededError(SandboxError):
    """A JobLimit was hit (E2): the job fails and its partial output is not trusted."""

    code = "limit-exceeded"


class BridgeError(SandboxError):
    """A job-bridge message or path broke a rule (E4, E5)."""

    code = "bridge"


class PathRuleError(BridgeError):
    """A path is absolute, climbs with '..', holds NUL or odd encodings, or leaves the job dir (E5)."""

    code = "bridge-path"


# --- payments (SPEC F) ------------------------------------------------------------------------------


class LedgerError(CyxwizError):
    code = "ledger"


class EscrowError(LedgerError):
    code = "escrow"


class EscrowStateError(EscrowError):
    """The escrow is not in a state that allows this move (each escrow moves at most once, F2)."""

    code = "escrow-state"
    http_status = 409


class PaymentTooLowError(EscrowError):
    code = "payment-too-low"
    http_status = 422


# --- storage (SPEC D2, D3) --------------------------------------------------------------------------


class StorageError(CyxwizError):
    code = "storage"


class IntegrityError(StorageError):
    """Content hash mismatch on an artifact (D3)."""

    code = "integrity"


class DecryptionError(StorageError):
    code = "decryption"


class PresignError(StorageError):
    """A presigned URL is expired, tampered, or scoped to another job or key."""

    code = "presign"
    http_status = 403


# --- verification ------------------------------------------------------------------------------------


class VerificationError(CyxwizError):
    """A completion proof or training result failed verification."""

    code = "verification"


class ProofSignatureError(VerificationError):
    code = "proof-signature"
