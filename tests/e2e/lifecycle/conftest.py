"""One embedded stack for every module of this package: the one ``make demo`` runs (Prefect server, dev PKI,
LiteSVM ledger service, coordinator + gateway over mTLS, verifier service, node agents as processes).

Starting it is ~30 s idle and ~60 s on a loaded CI host, so the lifecycle, datasets and referee modules share
it instead of each starting their own; it stops when the last test of the package is done. Each module
runs node-1 (the honest node work is pinned to) in an agent process of its own: a worker's events client
re-sends the events it has no confirmation for when it reconnects, and the gateway refuses (and audits) an
event about a job that is over, so a worker that ran the previous module's jobs could put refusals into
this module's audit log. The other nodes a module brings up serve that module only, because it leaves them
in a state the next must not see (revoked, or heartbeating recently enough to be picked for work nobody
pinned to it):

    test_datasets.py               node-3 (the second node of two users' jobs)
    test_lifecycle.py              node-4 (revoked mid-job)
    test_referee_and_disputes.py   node-2 (the forging replica; first node-1 must be the only one eligible)

At the end of a module its agents stop and its other nodes are retired (certificate revoked,
cessationOfOperation), so every module passes alone, after the others, or in any order given on the
command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lifecycle_conftest import QUICK_POLL, wait_until

NODES = ("node-1", "node-2", "node-3", "node-4")
HONEST = "node-1"


@pytest.fixture(scope="package")
def shared_stack() -> Iterator[Any]:
    """The embedded control plane; every node has a certificate, a wallet and its stake, none runs yet."""
    from infra.stack import embedded_stack
    from tasks import services

    saved = dict(os.environ)
    # A short home: the node's sandbox work dir lives under it and its bridge socket path must stay under
    # the AF_UNIX limit (pytest's tmp dirs are too deep for jobdir/work/bridge/bridge.sock).
    home = Path(tempfile.mkdtemp(prefix="cyxlc-", dir="/tmp"))
    try:
        with embedded_stack(home, say=lambda _m: None, nodes=NODES, lifecycle_deployment=True) as built:
            built.env.update(QUICK_POLL)
            yield built
    finally:
        # embedded_stack points this process at its server and config; leave the session as we found it.
        os.environ.clear()
        os.environ.update(saved)
        services.reset()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(shared_stack: Any) -> Iterator[Any]:
    """The shared stack for one module, node-1 running; afterwards every agent the module ran stops (the
    control worker too) and its other nodes retire."""
    from tasks import services

    env = dict(shared_stack.env)
    try:
        started = dt.datetime.now(dt.UTC)
        shared_stack.start_agent(HONEST)
        # Its record may still hold the previous module's agent's heartbeat: wait for this agent's own.
        assert wait_until(lambda: _last_beat(shared_stack, HONEST) > started, timeout=90), "node-1 is up"
        yield shared_stack
    finally:
        for name in list(shared_stack.agents):
            shared_stack.stop_agent(name)
        _retire_other_nodes(shared_stack)
        shared_stack.env.clear()
        shared_stack.env.update(env)
        services.reset()


def _last_beat(stack: Any, name: str) -> dt.datetime:
    from tasks.coordinator_channel import node_name

    beats = [
        record.last_heartbeat
        for record in stack.coordinator.store.list_nodes()
        if node_name(record.subject) == name and record.last_heartbeat is not None
    ]
    return max(beats, default=dt.datetime.min.replace(tzinfo=dt.UTC))


def _retire_other_nodes(stack: Any) -> None:
    """Revoke every node but node-1 that registered: none is ever dispatched to again."""
    from cyxwiz.errors import ConflictError
    from tasks.coordinator_channel import node_name

    registered = {node_name(record.subject) for record in stack.coordinator.store.list_nodes()}
    for name in registered & set(NODES) - {HONEST}:
        with contextlib.suppress(ConflictError):  # revoked already: by the module itself, or before
            stack.pki.revoke(stack.pki.node_cert(name), reason="cessationOfOperation")
