"""``node-healthcheck``: runs on a node agent and reports what the node can do.

Dispatching it through the GPU pool proves the whole path (deployment → node's work queue → cyxwiz-sandbox
worker → flow run) without spending escrow; the report lands as a Prefect artifact.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact


@flow(name="node-healthcheck", log_prints=False)
def node_healthcheck() -> dict[str, Any]:
    report: dict[str, Any] = {
        "node": os.environ.get("CYXWIZ_NODE_NAME", "unknown"),
        "python": sys.version.split()[0],
        "sandbox_backend": os.environ.get("CYXWIZ_SANDBOX_BACKEND", "unset"),
        "bubblewrap": shutil.which("bwrap") is not None,
        "docker": shutil.which("docker") is not None,
        "runsc": shutil.which("runsc") is not None,
        "memory_limit_mb": os.environ.get("CYXWIZ_SANDBOX_MEMORY_MB", "unset"),
        "wall_limit_s": os.environ.get("CYXWIZ_SANDBOX_WALL_SECONDS", "unset"),
    }
    get_run_logger().info("node %s healthy: backend %s", report["node"], report["sandbox_backend"])
    create_table_artifact(
        key="node-health",
        table=[{"check": key, "value": str(value)} for key, value in report.items()],
        description=f"Health of node {report['node']}",
    )
    return report
