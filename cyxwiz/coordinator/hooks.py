"""What the coordinator leaves to the rest of the system: job specs, escrow, dispatch, proofs, storage.

The Prefect layer wires real implementations in (JobSpec validation, escrow creation, flow runs, proof
verification, presigned URLs); :class:`BasicHooks` is the embedded default used by tests and by
``cyxwiz serve`` when nothing else is configured. Core code never imports Prefect (ARCHITECTURE layout).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from cyxwiz.coordinator.config import DEV_WARNING
from cyxwiz.coordinator.store import JobRecord
from cyxwiz.errors import NotFoundError, ValidationError
from cyxwiz.transport.identity import PeerIdentity

UrlKind = Literal["input", "output"]

#: Upper bound on a job's wall time the coordinator accepts (E2 default limit is 3600 s).
MAX_DURATION_S = 7 * 24 * 3600


class CoordinatorHooks(Protocol):
    def validate_spec(self, spec: Mapping[str, Any], *, user_id: str) -> tuple[dict[str, Any], int]:
        """Validate a submitted job spec (SPEC G); return (normalised spec, wall-time seconds)."""
        ...

    def on_submitted(self, job: JobRecord) -> None:
        """After the job row exists: escrow + dispatch (the Prefect layer). Raise to refuse."""
        ...

    def verify_completion(self, job: JobRecord, proof: Mapping[str, Any], peer: PeerIdentity) -> str:
        """Check a completion proof from the assigned node; return the job's next status."""
        ...

    def presign(
        self,
        job: JobRecord,
        *,
        kind: UrlKind,
        name: str,
        method: str,
        sha256: str | None = None,
        size: int | None = None,
    ) -> Any:
        """A presigned URL (a string, or a mapping with ``url`` and ``headers``) for ``name`` under the
        job's input or output prefix; PUTs are bound to ``sha256`` and ``size``."""
        ...

    def wallet(self, user_id: str, *, job_ids: Sequence[str]) -> dict[str, Any]:
        """The user's wallet view: wallets that funded ``job_ids`` (the caller's own jobs), their
        balances, and those jobs' escrows — nobody else's (C2)."""
        ...

    def funding_terms(self) -> dict[str, Any]:
        """Public values the user's client signs an escrow lock against (mint, multisig, rent, blockhash)."""
        ...

    def presign_dataset_upload(self, user_id: str, *, sha256: str, size: int, suffix: str) -> dict[str, Any]:
        """A PUT into the user's own area bound to ``sha256`` and ``size``, and the URI jobs name it by."""
        ...

    def archive(self, job: JobRecord) -> list[dict[str, Any]]:
        """The job's archived artifacts (name, size, sha256); the route checked the caller may read it."""
        ...

    def check_job_funding(
        self, job: JobRecord, funding: Mapping[str, Any], *, user_id: str
    ) -> dict[str, Any]:
        """``user_id``'s exact lock of the job's payment for this job (no key: F1, C2); its normal form."""
        ...

    def open_archived(self, job: JobRecord, name: str) -> tuple[dict[str, Any], Iterator[bytes]]:
        """One archived artifact's metadata and its verified content (:mod:`cyxwiz.storage.job_archive`)."""
        ...


class BasicHooks:
    """Embedded defaults: a light spec check, no escrow, proofs recorded as given, storage optional."""

    #: Permissive (no escrow, any proof accepted): ``/v1/health`` and ``cyxwiz serve --dev`` announce it.
    dev_warning = DEV_WARNING

    def __init__(self, *, store: Any | None = None, url_ttl_s: int = 900) -> None:
        self.store = store  # a cyxwiz.storage object store with presign support, when configured
        self.url_ttl_s = url_ttl_s

    def validate_spec(self, spec: Mapping[str, Any], *, user_id: str) -> tuple[dict[str, Any], int]:
        if not isinstance(spec.get("job_type"), str) or not spec["job_type"]:
            raise ValidationError("job_type is required", field="spec.job_type", rule="G1")
        limits = spec.get("limits") or {}
        duration = limits.get("wall_time_s", 3600) if isinstance(limits, Mapping) else None
        if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= MAX_DURATION_S:
            raise ValidationError(
                f"must be an integer in 1..{MAX_DURATION_S}", field="spec.limits.wall_time_s", rule="E2"
            )
        return dict(spec), duration

    def on_submitted(self, job: JobRecord) -> None:
        return None

    def verify_completion(self, job: JobRecord, proof: Mapping[str, Any], peer: PeerIdentity) -> str:
        return "completed"

    def presign(
        self,
        job: JobRecord,
        *,
        kind: UrlKind,
        name: str,
        method: str,
        sha256: str | None = None,
        size: int | None = None,
    ) -> Any:
        del sha256, size
        presign = getattr(self.store, "presign_url", None)
        if presign is None:
            raise NotFoundError("no object store with presigning is configured", field="name")
        from cyxwiz.storage import layout

        key = layout.job_input(job.job_id, name) if kind == "input" else layout.job_output(job.job_id, name)
        return str(presign(key, method=method, expires_in=self.url_ttl_s))

    def wallet(self, user_id: str, *, job_ids: Sequence[str]) -> dict[str, Any]:
        del job_ids
        return {"user_id": user_id, "wallets": {}, "escrows": []}

    def funding_terms(self) -> dict[str, Any]:
        raise NotFoundError("no ledger is configured (dev hooks)", field="ledger")

    def presign_dataset_upload(self, user_id: str, *, sha256: str, size: int, suffix: str) -> dict[str, Any]:
        del user_id, sha256, size, suffix
        raise NotFoundError("no object store takes dataset uploads here", field="dataset", rule="G1")

    def archive(self, job: JobRecord) -> list[dict[str, Any]]:
        from cyxwiz.storage.job_archive import list_archive

        return [obj.to_dict() for obj in list_archive(self._archive_store(), job.job_id)]

    def open_archived(self, job: JobRecord, name: str) -> tuple[dict[str, Any], Iterator[bytes]]:
        from cyxwiz.storage.job_archive import open_archived

        obj, chunks = open_archived(self._archive_store(), job.job_id, name)
        return obj.to_dict(), chunks

    def check_job_funding(
        self, job: JobRecord, funding: Mapping[str, Any], *, user_id: str
    ) -> dict[str, Any]:
        del job, funding, user_id
        raise NotFoundError("no ledger is configured (dev hooks)", field="ledger")

    def _archive_store(self) -> Any:
        if self.store is None:
            raise NotFoundError("no object store holds archives here", field="archive")
        return self.store
