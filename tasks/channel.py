"""How a node's flow run talks to the control plane: the coordinator API over mTLS with the job token.

The Protocol keeps the flow independent of transport details; :class:`agents.node_client.CoordinatorChannel`
is the implementation (mTLS + job token), tests may pass another implementation of the same calls.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol


class NodeChannel(Protocol):
    def fetch_input(self, job_id: str, name: str, *, sha256: str | None) -> bytes:
        """The job's input ``name``, its SHA-256 checked when given (D3)."""
        ...

    def report_progress(self, job_id: str, message: dict[str, Any]) -> None:
        """Relay one bridge message (progress/metrics/checkpoint) to the coordinator."""
        ...

    def upload_output(self, job_id: str, name: str, path: Path) -> None:
        """Upload one output artifact to the job's own output prefix."""
        ...

    def submit_proof(self, job_id: str, proof: bytes) -> None:
        """Hand the signed completion proof to the coordinator (F1)."""
        ...


class ControlChannel(Protocol):
    """The lifecycle's calls to the coordinator (scheduler role, mTLS)."""

    def create_job(
        self,
        *,
        user: str,
        spec: dict[str, Any],
        duration_s: int,
        job_id: str | None = None,
        status: str = "submitted",
    ) -> str:
        """Create the job row (under ``job_id`` when the user's client chose it); returns the job id."""
        ...

    def assign(
        self, job_id: str, *, node: str | None = None, exclude: Collection[str] = ()
    ) -> dict[str, Any]:
        """Pick a healthy unrevoked node (none named in ``exclude``: node ids or PeerIDs) and mint its job
        token; returns ``node_id``, ``queue``, ``jti``, ``peer_id`` and ``wallet``."""
        ...

    def eligible(self, *, node: str | None = None, exclude: Collection[str] = ()) -> list[tuple[Any, str]]:
        """(node record, name) of every node ``assign`` could pick now."""
        ...

    def job(self, job_id: str) -> dict[str, Any]:
        """The job record: owner (``user_id``), status, assigned node, submitted proof, receipt time, and
        the ``funding`` the owner's client handed in (None until then)."""
        ...

    def node_certificates(self, node_id: str) -> list[Any]:
        """Every certificate the coordinator accepted or issued for the node (its records, not a PKI
        directory): what the node's proofs are verified against across renewals (A7, F1)."""
        ...

    def revoke_job_token(self, job_id: str) -> None: ...

    def set_status(self, job_id: str, status: str, *, detail: str = "") -> None: ...
