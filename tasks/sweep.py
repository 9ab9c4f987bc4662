"""What the escrow sweep needs to know from Prefect: is the lifecycle run that owns an escrow still alive?"""

from __future__ import annotations

import uuid

from cyxwiz.ledger.recovery import RunStatus


def lifecycle_run_state(run_id: str | None) -> RunStatus:
    """``running`` while the run may still settle its escrow itself; ``terminal`` once it ended (any
    final state, its rollback hooks ran or never will); ``gone`` when Prefect does not know it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not run_id:
        return "gone"
    try:
        key = uuid.UUID(run_id)
    except ValueError:
        return "gone"
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(key)
        except ObjectNotFound:
            return "gone"
    state = run.state
    return "terminal" if state is not None and state.is_final() else "running"
