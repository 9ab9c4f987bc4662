"""Shared rounds: concurrent look-ups of the chain merged into one call, none older than its question (F2).

Escrows in flight at once ask the chain the same kind of question at nearly the same moment: the status
of their signatures after a send, the latest blockhash before they sign. :class:`SharedRounds` answers
them in rounds. A caller's key joins the next round to *start*, so the answer it gets was fetched after
it asked, exactly as fresh as a call of its own; whoever finds no round running leads the next one, for
everybody waiting. Nothing is cached between rounds.

A round whose call fails raises in its leader, as the leader's own call would have; the others who shared
it ask again in a later round (each makes its own attempt, as without sharing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from solders.hash import Hash

from cyxwiz.ledger.chain import Chain, SignatureStatus
from cyxwiz.ledger.hostrounds import HostBlockhash, HostStatuses

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: a round's answer when its call raised
_FAILED: Mapping[object, object] = {}


class SharedRounds(Generic[K, V]):
    """``lookup(keys) -> {key: value}``, called once per round for every key asked while none started."""

    def __init__(self, lookup: Callable[[list[K]], Mapping[K, V]]) -> None:
        self._lookup = lookup
        self._cond = threading.Condition()
        self._pending: dict[K, None] = {}  # keys for the next round, in the order asked
        self._started = 0
        self._finished = 0
        self._busy = False
        self._answers: dict[int, Mapping[K, V]] = {}
        self._readers: dict[int, int] = {}  # round -> callers yet to read its answer
        #: rounds run (benches read it)
        self.calls = 0

    def ask(self, key: K) -> V | None:
        """The value of ``key`` from a round that started after this call; None when it has none."""
        with self._cond:
            while True:
                self._pending[key] = None
                round_no = self._started + 1  # the running round (if any) took its keys already
                self._readers[round_no] = self._readers.get(round_no, 0) + 1
                try:
                    while self._finished < round_no:
                        if self._busy:
                            self._cond.wait()
                        else:
                            self._lead()  # not busy: started == finished, so this is round_no
                    answer = self._answers[round_no]
                finally:
                    self._readers[round_no] -= 1
                    if not self._readers[round_no]:
                        del self._readers[round_no]
                        self._answers.pop(round_no, None)
                if answer is not _FAILED:
                    return answer.get(key)

    def _lead(self) -> None:
        """Run the next round (called holding the condition; released during the call)."""
        self._busy = True
        self._started += 1
        round_no = self._started
        batch = list(self._pending)
        self._pending.clear()
        answer: Mapping[K, V] = _FAILED  # type: ignore[assignment]  # the sentinel is keyless
        self._cond.release()
        try:
            answer = self._lookup(batch)
        finally:
            self._cond.acquire()
            self._busy = False
            self._answers[round_no] = answer
            self._finished = round_no
            self.calls += 1
            self._cond.notify_all()


class BatchStatus:
    """Signature look-ups of concurrent escrows merged into one ``getSignatureStatuses`` call per round;
    with ``host_file``, also with the other processes using that file (:mod:`cyxwiz.ledger.hostrounds`)."""

    def __init__(self, chain: Chain, *, host_file: Path | None = None) -> None:
        self._chain = chain
        many = getattr(chain, "signature_statuses", None)
        self.host = None
        if host_file is not None and many is not None:
            # a status counts as landed at the chain's commitment: processes configured for another one
            # (``finalized``) never share answers with these
            commitment = getattr(chain, "commitment", "confirmed")
            self.host = HostStatuses(path=Path(f"{host_file}-{commitment}"), fetch=many)
        self._rounds: SharedRounds[str, SignatureStatus | None] = SharedRounds(self._lookup)

    @property
    def calls(self) -> int:
        return self._rounds.calls

    def status(self, signature: str) -> SignatureStatus | None:
        return self._rounds.ask(signature)

    def close(self) -> None:
        if self.host is not None:
            self.host.close()

    def _lookup(self, batch: list[str]) -> dict[str, SignatureStatus | None]:
        many = self.host or getattr(self._chain, "signature_statuses", None)
        if many is None:
            return {sig: self._chain.signature_status(sig) for sig in batch}
        return dict(zip(batch, many(batch), strict=True))


class SharedBlockhash:
    """``getLatestBlockhash`` of concurrent escrows merged into one call per round: as fresh as a call of
    each one's own (a blockhash fetched after it asked), one round trip for all of them. With ``host_file``
    (next to an escrow database on disk) the rounds are also shared with the other processes using that
    file (:mod:`cyxwiz.ledger.hostrounds`): lifecycles that each run in a process of their own."""

    def __init__(self, chain: Chain, *, host_file: Path | None = None) -> None:
        fetch = chain.latest_blockhash
        self.host = None if host_file is None else HostBlockhash(path=host_file, fetch=fetch)
        lookup = fetch if self.host is None else self.host
        self._rounds: SharedRounds[str, tuple[Hash, int]] = SharedRounds(lambda _keys: {"latest": lookup()})

    @property
    def calls(self) -> int:
        return self._rounds.calls

    def __call__(self) -> tuple[Hash, int]:
        """(blockhash, last valid block height), as :meth:`Chain.latest_blockhash`."""
        answer = self._rounds.ask("latest")
        assert answer is not None  # every round answers "latest" (or raises)
        return answer

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
