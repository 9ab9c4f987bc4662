"""The stake belongs to the node, not to one of its keys (F1, A7).

A certificate renewal gives the node a new key, hence a new PeerID, while the node id stays: the
coordinator links every PeerID a node held (``cyx_node_peers``, ``cyx_node_certs``). The stake was
deposited under one of them; the dispatch check and every slash (fraud, the referee's deviator, an
upheld dispute, the sweep's owed ones) resolve the PeerID they hold through :func:`node_peers`, so a
renewed node is still dispatched to and cannot renew to escape a slash. Links come from the
coordinator's own records only: another node's stake never counts.

The verifier service does not take the coordinator's word for those links when it co-signs (issue 17):
it follows the renewal links the nodes' keys signed (:func:`signed_earlier_peers`,
:func:`signed_later_peers`), so a compromised coordinator cannot point a fraud at an honest node's stake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.stake import StakeLedger, StakePolicy


def _store() -> Any:
    """The coordinator's records: the plane's channel's, else opened from the config."""
    from tasks import services
    from tasks.coordinator_channel import SchedulerChannel

    channel = services.control_channel()
    if isinstance(channel, SchedulerChannel):
        return channel.store
    return SchedulerChannel.from_config(services.config()).store


def node_peers(peer_id: str, store: Any = None) -> frozenset[str]:
    """Every PeerID the coordinator links to the node this PeerID is (itself included); only itself
    when the coordinator knows no such node."""
    store = store if store is not None else _store()
    node = store.node_by_peer(peer_id)
    if node is None:
        return frozenset({peer_id})
    certs = (c.peer_id for c in store.node_certificates(node.node_id))
    return frozenset({peer_id, *store.peer_ids_of(node.node_id), *certs})


def signed_earlier_peers(peer_id: str, store: Any = None) -> frozenset[str]:
    """``peer_id`` and the keys that renewed into it, by the links each of them signed (issue 17): what
    the verifier service lets a slash take, so a coordinator that lists an honest node's certificate
    under a fraudster's node cannot have the honest node's stake slashed."""
    from cyxwiz.ledger.payout import earlier_keys

    store = store if store is not None else _store()
    return earlier_keys(peer_id, store.renewal_links_to)


def signed_later_peers(peer_id: str, store: Any = None) -> frozenset[str]:
    """``peer_id`` and the keys it renewed into (signed links): a job under any keeps its stake locked."""
    from cyxwiz.ledger.payout import linked_keys

    store = store if store is not None else _store()
    return linked_keys(peer_id, store.renewal_links_from)


def staked_peer(node_id: str, store: Any = None, stakes: StakeLedger | None = None) -> str | None:
    """The PeerID the node's stake is held under (any of its linked ones), or None when it has none."""
    store = store if store is not None else _store()
    peers = store.peer_ids_of(node_id)
    if not peers:
        return None
    record = (stakes or stake_ledger(store=store)).node_stake(peer_id=peers[0])
    return record.peer_id if record is not None else None


def stake_ledger(
    *, ledger: EscrowLedger | None = None, policy: StakePolicy | None = None, store: Any = None
) -> StakeLedger:
    """The control plane's stake operations, with the coordinator's links between a node's PeerIDs.
    ``policy``: the ledger config's unless given."""
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.stake import StakeLedger
    from tasks import services

    policy = policy or LedgerConfig.from_file(services.config().ledger_config).stake_policy()
    return StakeLedger(
        ledger=ledger or services.ledger(),
        policy=policy,
        node_peers=lambda peer: node_peers(peer, store),
    )
