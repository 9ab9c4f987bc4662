"""The coordinator's tables (SQLAlchemy Core): SQLite embedded, PostgreSQL in production.

nodes (identity = certificate PeerID) and their earlier certificates, sessions (revocable; refresh-token
families) with the certificate each was opened with, refresh tokens (one-shot, rotation with reuse
detection, SPEC B5), jobs (owner, assigned node, status, progress, proof) and configuration.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

nodes = sa.Table(
    "cyx_nodes",
    metadata,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("peer_id", sa.String(128), nullable=False, unique=True),
    sa.Column("subject", sa.String(1024), nullable=False),
    sa.Column("cert_serial", sa.String(64), nullable=False),
    sa.Column("hardware", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | draining | banned | revoked
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_heartbeat", sa.DateTime(timezone=True)),
    # The payout wallet (base58 public key) the node registered under its certificate's PeerID (F1).
    sa.Column("wallet", sa.String(64)),
)
sessions = sa.Table(
    "cyx_sessions",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("principal_kind", sa.String(8), nullable=False),  # node | user
    sa.Column("principal_id", sa.String(128), nullable=False, index=True),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
#: Earlier certificates of a node (renewed, not revoked): they keep working until they expire, so jobs
#: in flight when the node switched to its new certificate are not dropped (A7 automatic renewal).
node_peers = sa.Table(
    "cyx_node_peers",
    metadata,
    sa.Column("peer_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    sa.Column("cert_serial", sa.String(64), nullable=False),
)
#: Every certificate the coordinator accepted (registration) or issued (renewal) for a node: what a
#: node's proof is verified against, from the coordinator's own records, never from a PKI directory (A7, F1).
node_certs = sa.Table(
    "cyx_node_certs",
    metadata,
    sa.Column("peer_id", sa.String(128), primary_key=True),
    sa.Column("node_id", sa.String(64), nullable=False, index=True),
    sa.Column("serial", sa.String(64), nullable=False),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
    sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)
#: The client certificate a session was opened with, so revoking the certificate kills its family.
session_certs = sa.Table(
    "cyx_session_certs",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("issuer", sa.String(1024), nullable=False),
    sa.Column("serial", sa.String(64), nullable=False),
)
refresh_tokens = sa.Table(
    "cyx_refresh_tokens",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("session_id", sa.String(128), nullable=False, index=True),
    sa.Column("used", sa.Boolean, nullable=False, default=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
jobs = sa.Table(
    "cyx_jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("node_id", sa.String(64), index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("duration_s", sa.Integer, nullable=False),
    sa.Column("progress", sa.JSON, nullable=False),
    sa.Column("proof", sa.JSON),
    # The id of the job's current assignment (a fresh one per claim): what job tokens and object URLs
    # were issued under; one issued under an earlier assignment is dead (issue 21, C3).
    sa.Column("assignment", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
#: What a job's node was given under one assignment (a job token's jti, a presigned URL's signature hash):
#: dead once the job is re-assigned or settled (issue 21, C3; cyxwiz.coordinator.fencing).
job_grants = sa.Table(
    "cyx_job_grants",
    metadata,
    sa.Column("grant_id", sa.String(128), primary_key=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("node_id", sa.String(64), nullable=False),
    sa.Column("assignment", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # job-token | url
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)
config = sa.Table(
    "cyx_config",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
)

NODE_STATUSES = ("active", "draining", "banned", "revoked")


def add_missing_columns(engine: Engine) -> None:
    """Columns added after a table first shipped (``create_all`` only makes missing tables)."""
    for table, column in (("cyx_nodes", "wallet"), ("cyx_jobs", "assignment")):
        present = {c["name"] for c in sa.inspect(engine).get_columns(table)}
        if column not in present:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} VARCHAR(64)"))
