"""Coordinator hooks that wire the coordinator API into the Prefect layer (issue 8 ↔ issue 9).

A user's ``POST /v1/jobs`` becomes a ``job-lifecycle`` flow run; presigned URLs come from the object
store's signer (local backend) so nodes never hold store credentials (SPEC D2, C3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cyxwiz.errors import AuthorizationError, NotFoundError, ValidationError
from tasks.control import parse_job_request

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
    ) -> None:
        from cyxwiz.storage.urlsign import LocalPresigner

        self.store = store
        self.presigner = LocalPresigner(store=store, signer=signer)
        self.url_ttl_s = url_ttl_s
        self.start_flow_runs = start_flow_runs
        self.api_url = api_url
        #: F3 bound; None reads the ledger config of the control plane at each submission.
        self.minimum_payment = minimum_payment

    def validate_spec(self, spec: Mapping[str, Any], *, user_id: str) -> tuple[dict[str, Any], int]:
        """The lifecycle's own validator, data included, before any job row exists (G1, G2, F3, D3)."""
        from cyxwiz.datasets import DatasetSources
        from tasks import services
        from tasks.control import check_dataset, minimum_payment

        minimum = self.minimum_payment
        if minimum is None:
            minimum = minimum_payment(services.config())
        request = parse_job_request({**dict(spec), "user": user_id}, minimum_payment=minimum)
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
                LIFECYCLE_DEPLOYMENT, parameters={"spec": {**job.spec, "job_id": job.job_id}}, timeout=0
            )

    def verify_completion(self, job: Any, proof: Mapping[str, Any], peer: Any) -> str:
        # The full verification (holdout, replay) runs in the lifecycle flow; here only the cheap identity
        # check, so a proof from a node that is not the assigned one is refused at the door (C2, F1).
        node_peer = (proof.get("proof") or {}).get("node_peer_id") if isinstance(proof, Mapping) else None
        if node_peer != peer.peer_id:
            raise AuthorizationError(
                "the proof names another node than the certificate", field="proof.node_peer_id", rule="F1"
            )
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

    def wallet(self, user_id: str) -> dict[str, Any]:
        from tasks import services

        # Read over RPC and from the store with no signing key: the API process holds no ledger key (F1).
        view = services.wallet_view()
        try:
            escrows = [
                {"job_id": r.job_id, "state": str(r.state), "amount": r.amount} for r in view.escrows()
            ]
        except NotFoundError:
            escrows = []
        finally:
            view.close()
        return {"user_id": user_id, "escrows": escrows, "as_of": dt.datetime.now(dt.UTC).isoformat()}
