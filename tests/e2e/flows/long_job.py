"""``long-job`` (tests only): a job's flow run that outlives several node certificates (issue 18, A7).

Every few seconds it does what a training run does on its channels: a task (task-run events on
``events/in``), a log line (``POST /logs``, through the gateway with the job token), a progress report to
the coordinator over the node's certificate with the job token
(:class:`agents.node_client.CoordinatorChannel`), and at the end an artifact. It records the
certificates its calls went out under.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact


@task
def step(n: int) -> int:
    return n


@flow(name="long-job")
def long_job(job_id: str, seconds: float = 40.0, every: float = 2.0) -> dict[str, Any]:
    from agents.credentials import current_settings
    from agents.node_client import CoordinatorChannel

    channel = CoordinatorChannel.from_env()
    logger = get_run_logger()
    total = max(1, int(seconds / every))
    certificates: set[str] = set()
    for n in range(1, total + 1):
        step(n)
        logger.info("job %s step %d of %d", job_id, n, total)
        channel.report_progress(job_id, {"kind": "progress", "step": n, "total": total})
        certificates.add(str(current_settings(channel.settings).cert))
        time.sleep(every)
    create_markdown_artifact(key="long-job", markdown=f"{total} steps under {len(certificates)} certificates")
    return {"steps": total, "certificates": len(certificates)}
