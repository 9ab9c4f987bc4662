"""Coordinator hooks that wire the coordinator API into the Prefect layer (issue 8 ↔ issue 9).

A user's ``POST /v1/jobs`` becomes a ``job-lifecycle`` flow run; presigned URLs come from the object
store's signer (local backend) so nodes never hold store credentials (SPEC D2, C3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import AuthorizationError, ConfigError, NotFoundError, ValidationError
from tasks.control import funding_of, parse_job_request, replica_spec

if TYPE_CHECKING:
    from pathlib import Path

    from cyxwiz.audit import AuditSink
    from cyxwiz.coordinator.config import CoordinatorConfig
    from cyxwiz.coordinator.service import CoordinatorHandle
    from cyxwiz.ledger.view import LedgerView

LIFECYCLE_DEPLOYMENT = "job-lifecycle/job-lifecycle"


class PrefectHooks:
    def __init__(
        self,
        *,
        store: Any,
        signer: Any,
        url_ttl_s: int = 900,
        start_flow_runs: bool = True,
        api_url: str | None = None,
        minimum_payment: int | None = None,
        ledger: LedgerView | None = None,
        lifecycle_deployment: str = LIFECYCLE_DEPLOYMENT,
    ) -> None:
        from cyxwiz.storage.urlsign import LocalPresigner

        #: Read-only (no key): wallet views and the terms a user's client signs against (C2).
        self.ledger = ledger
        self.store = store
        self.presigner = LocalPresigner(store=store, signer=signer)
        self.url_ttl_s = url_ttl_s
        self.start_flow_runs = start_flow_runs
        self.api_url = api_url
        self.lifecycle_deployment = lifecycle_deployment
        #: F3 bound; None reads the ledger config of the control plane at each submission.
        self.minimum_payment = minimum_payment

    def validate_spec(self, spec: Mapping[str, Any], *, user_id: str) -> tuple[dict[str, Any], int]:
        """The lifecycle's own validator, data included, before any job row exists (G1, G2, F3, D3); and
        the lock the user's client signed must be this user's, for this job and payment (F1, C2)."""
        from cyxwiz.datasets import DatasetSources
        from tasks import services
        from tasks.control import check_dataset, minimum_payment

        minimum = self.minimum_payment
        if minimum is None:
            minimum = self.ledger.minimum_payment if self.ledger else minimum_payment(services.config())
        request = parse_job_request({**dict(spec), "user": user_id}, minimum_payment=minimum)
        fundings = [(request.job_id, funding_of(dict(spec), job_id=request.job_id))]
        if request.replica_job_id is not None:  # redundant mode: the second node's own signed lock (F1)
            replica = request.replica_job_id
            fundings.append((replica, funding_of(replica_spec(dict(spec)), job_id=replica)))
        if self.ledger is not None:
            from cyxwiz.ledger.client_funding import check_funding

            terms = self.ledger.funding_terms()
            for job_id, funding in fundings:
                check_funding(funding, terms=terms, job_id=job_id, amount=request.payment, user=user_id)
        check_dataset(request, DatasetSources.from_env(store=self.store))
        normalized = {**dict(spec), "user": user_id, "job_type": request.training_doc["job_type"]}
        normalized.pop("job_id", None)
        return normalized, request.wall_seconds

    def presign_dataset_upload(self, user_id: str, *, sha256: str, size: int, suffix: str) -> dict[str, Any]:
        """A PUT into the user's own area, bound to the file's hash and size (``job submit --dataset``)."""
        from cyxwiz.datasets.ingest import upload_grant

        return upload_grant(
            self.presigner, user_id, sha256=sha256, size=size, suffix=suffix, ttl_s=self.url_ttl_s
        )

    def on_submitted(self, job: Any) -> None:
        if not self.start_flow_runs:
            return
        import contextlib

        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # Prefect settings do not follow into the server's threads: name the API explicitly.
        settings = (
            temporary_settings(updates={PREFECT_API_URL: self.api_url})
            if self.api_url
            else contextlib.nullcontext()
        )
        with settings:
            # timeout=0: the API answers at once; the lifecycle runs on the control pool.
            run_deployment(
                self.lifecycle_deployment, parameters={"spec": {**job.spec, "job_id": job.job_id}}, timeout=0
            )

    def verify_completion(self, job: Any, proof: Mapping[str, Any], peer: Any) -> str:
        # The full verification (holdout, replay) runs in the lifecycle flow; at the door the cheap checks:
        # a well-formed proof for this job, naming the calling node and signed by its certificate's key
        # (C2, F1). Anything else is refused before it is stored.
        import json

        from cyxwiz.verification.proof import SignedProof, verify_proof_signature

        node_peer = (proof.get("proof") or {}).get("node_peer_id") if isinstance(proof, Mapping) else None
        if node_peer != peer.peer_id:
            raise AuthorizationError(
                "the proof names another node than the certificate", field="proof.node_peer_id", rule="F1"
            )
        signed = SignedProof.from_json(json.dumps(dict(proof)))
        if signed.proof.job_id != job.job_id:
            raise AuthorizationError("the proof is for another job", field="proof.job_id", rule="F1")
        verify_proof_signature(signed, peer.certificate.public_key())
        # Not "completed": the lifecycle still verifies and settles, and writes released/refunded.
        return "verifying"

    def presign(
        self,
        job: Any,
        *,
        kind: str,
        name: str,
        method: str,
        sha256: str | None = None,
        size: int | None = None,
    ) -> Any:
        from cyxwiz.storage import layout

        if kind == "input":
            if method != "GET":
                raise AuthorizationError("inputs are read-only", field="method", rule="C3")
            return self.presigner.presign_get(
                layout.job_input(job.job_id, name), expires_in=self.url_ttl_s
            ).to_dict()
        if method != "PUT" or sha256 is None or size is None:
            raise ValidationError(
                "an output URL is a PUT bound to sha256 and size", field="sha256", rule="D3"
            )
        return self.presigner.presign_put(
            layout.job_output(job.job_id, name), sha256=sha256, size=size, expires_in=self.url_ttl_s
        ).to_dict()

    def wallet(self, user_id: str, *, job_ids: Sequence[str]) -> dict[str, Any]:
        """Only the caller's jobs' escrows, and only the wallets that funded them (C2)."""
        view = self._view()
        escrows = view.escrows(job_ids)
        wallets = sorted({record.user_wallet for record in escrows})
        return {
            "user_id": user_id,
            "wallets": {address: view.balance(address) for address in wallets},
            "escrows": [
                {"job_id": r.job_id, "state": str(r.state), "amount": r.amount, "wallet": r.user_wallet}
                for r in escrows
            ],
            "as_of": dt.datetime.now(dt.UTC).isoformat(),
        }

    def funding_terms(self) -> dict[str, Any]:
        return self._view().funding_terms().to_dict()

    def check_job_funding(self, job: Any, funding: Mapping[str, Any], *, user_id: str) -> dict[str, Any]:
        """The lock the owner's client signed for a job its lifecycle run holds open (F1, C2): exactly
        this user's lock of the job's payment for this job, checked as ``POST /v1/jobs`` checks one."""
        from cyxwiz.ledger.client_funding import Funding, check_funding

        parsed = Funding.from_dict(dict(funding))
        payment = job.spec.get("payment")
        if not isinstance(payment, int) or isinstance(payment, bool):
            raise ValidationError("the job names no payment", field="spec.payment", rule="F3")
        check_funding(
            parsed, terms=self._view().funding_terms(), job_id=job.job_id, amount=payment, user=user_id
        )
        return parsed.to_dict()

    def archive(self, job: Any) -> list[dict[str, Any]]:
        """The job's archived artifacts in the control plane's store (the route checked ownership, C2)."""
        from cyxwiz.storage.job_archive import list_archive

        return [obj.to_dict() for obj in list_archive(self.store, job.job_id)]

    def open_archived(self, job: Any, name: str) -> tuple[dict[str, Any], Iterator[bytes]]:
        from cyxwiz.storage.job_archive import open_archived

        obj, chunks = open_archived(self.store, job.job_id, name)
        return obj.to_dict(), chunks

    def _view(self) -> LedgerView:
        if self.ledger is None:
            raise NotFoundError("this coordinator has no ledger configured", field="ledger")
        return self.ledger


def production_coordinator(config: CoordinatorConfig, *, audit: AuditSink) -> CoordinatorHandle:
    """``cyxwiz serve coordinator --config``: every part real — the key-less ledger view, the object
    store and its presigner, the proof check at the door, and the Prefect control channel — each probed
    before the listener binds, so a missing one stops the start with one line naming it."""
    from cyxwiz.coordinator.service import build_coordinator
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.view import LedgerView
    from cyxwiz.storage.crypto import MasterKey
    from cyxwiz.storage.local import LocalObjectStore
    from cyxwiz.storage.urlsign import UrlSigner, asgi_app

    _probe(f"{config.prefect_api_url.rstrip('/')}/health", what="the Prefect API", field="prefect_api_url")
    ledger_config = LedgerConfig.from_file(config.ledger_config)
    _probe_ledger(ledger_config.rpc_url)
    master = MasterKey.from_file(config.store_master_key_file)
    store = LocalObjectStore(root=config.store_root, master_key=master)
    signer = _LateSigner()
    hooks = PrefectHooks(
        store=store,
        signer=signer,
        api_url=config.prefect_api_url,
        ledger=LedgerView.from_config(ledger_config),
        minimum_payment=ledger_config.minimum_payment,
        lifecycle_deployment=config.lifecycle_deployment,
    )
    handle = build_coordinator(
        cert=config.cert, key=config.key, trust_bundle=config.bundle, crl=config.crl,
        cert_issuer=_issuer(config.issuer_socket), state_dir=config.state_dir, db_url=config.db_url,
        hooks=hooks, audit=audit, host=config.host,
        port=config.port, max_body=64 << 20,
    )  # fmt: skip
    signer.target = UrlSigner.from_master_key(master, base_url=f"{config.public_url or handle.url}/objects")
    handle.app.app.mount(  # type: ignore[attr-defined]
        "/objects", asgi_app(store=store, signer=signer.target, mount="/objects")
    )
    return handle


def _issuer(socket_path: Path | None) -> Any:
    """The issuer service's client (it holds the CA key; this process never does, issue 17), probed."""
    if socket_path is None:
        return None
    from cyxwiz.issuer.service import RemoteIssuer

    issuer = RemoteIssuer(socket_path=socket_path)
    issuer.ca_certificate()  # unreachable: one line naming issuer_socket, before the listener binds
    return issuer


class _LateSigner:
    """The presigned URLs' base is known once the socket is bound; the hooks sign only after that."""

    target: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def _probe(url: str, *, what: str, field: str) -> None:
    import httpx

    try:
        httpx.get(url, timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"{what} at {url} is not answering ({type(exc).__name__})", field=field) from None


def _probe_ledger(rpc_url: str) -> None:
    import httpx

    try:
        answer = httpx.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"}, timeout=5.0)
        healthy = answer.json().get("result") == "ok"
    except (httpx.HTTPError, ValueError):
        healthy = False
    if not healthy:
        raise ConfigError(f"the ledger RPC at {rpc_url} is not answering", field="ledger_config")
