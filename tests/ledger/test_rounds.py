"""Shared rounds (F2 kept): concurrent look-ups share one call, and no answer is older than its question."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

from cyxwiz.ledger.chain import SignatureStatus
from cyxwiz.ledger.rounds import BatchStatus, SharedBlockhash, SharedRounds


class _Clock:
    """A lookup that answers each key with the number of the call that fetched it, and can be held."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_call = 0  # the number of the call that raises (0: none)

    def __call__(self, keys: list[str]) -> Mapping[str, int]:
        self.calls.append(list(keys))
        self.entered.set()
        self.release.wait(5)
        if len(self.calls) == self.fail_call:
            raise OSError("the chain did not answer")
        return {k: len(self.calls) for k in keys}


def _wait_for_waiters(rounds: SharedRounds[str, int], n: int) -> None:
    deadline = time.monotonic() + 5
    while sum(rounds._readers.values()) < n:
        assert time.monotonic() < deadline, "the askers never queued"
        time.sleep(0.001)


def test_one_caller_gets_its_own_call() -> None:
    clock = _Clock()
    rounds: SharedRounds[str, int] = SharedRounds(clock)
    assert rounds.ask("a") == 1
    assert rounds.ask("a") == 2  # nothing cached between rounds
    assert rounds.calls == 2


def _held_round(
    keys: list[str], *, fail_call: int = 0
) -> tuple[_Clock, SharedRounds[str, int], object, list[object]]:
    """``keys`` asked (a thread each) while a first round, for "first", is held open, then let go: the
    clock, the rounds, the first caller's result and each key's result (a value or the exception)."""
    clock = _Clock()
    clock.fail_call = fail_call
    rounds: SharedRounds[str, int] = SharedRounds(clock)
    clock.release.clear()
    results: list[object] = [None] * (len(keys) + 1)

    def ask(i: int, key: str) -> None:
        try:
            results[i] = rounds.ask(key)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i, key)) for i, key in enumerate(["first", *keys])]
    threads[0].start()
    assert clock.entered.wait(5)
    for thread in threads[1:]:
        thread.start()
    _wait_for_waiters(rounds, len(threads))
    clock.release.set()
    for thread in threads:
        thread.join(5)
    return clock, rounds, results[0], results[1:]


def test_askers_during_a_round_share_the_next_one_never_the_running_one() -> None:
    """Keys asked while a round runs are not answered by it (fetched before they asked): they share the
    next round, one call for all of them."""
    keys = [f"k{i}" for i in range(5)]
    clock, rounds, first, late = _held_round(keys)
    assert first == 1
    assert late == [2] * 5  # all from call 2, which started after they asked
    assert clock.calls[0] == ["first"] and sorted(clock.calls[1]) == keys
    assert rounds.calls == 2
    assert not rounds._answers and not rounds._readers  # every round's answer was read and dropped


def test_the_same_key_asked_twice_in_a_round_answers_both() -> None:
    clock, _rounds, _first, results = _held_round(["same", "same", "same"])
    assert results == [2, 2, 2]
    assert clock.calls[1] == ["same"]


def test_a_failed_round_raises_in_its_leader_and_the_others_ask_again() -> None:
    # the second round (the one the waiters share) fails
    _clock, rounds, first, results = _held_round(["w0", "w1", "w2"], fail_call=2)
    assert first == 1
    failed = [v for v in results if isinstance(v, OSError)]
    answered = [v for v in results if isinstance(v, int)]
    assert len(failed) == 1, results  # the one who led the failing round, as its own call would have
    assert len(answered) == 2 and all(v >= 3 for v in answered), results  # from a later, good round
    assert not rounds._answers and not rounds._readers


def test_batch_status_asks_many_signatures_in_one_call() -> None:
    class Chain:
        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
            self.batches.append(signatures)
            return [SignatureStatus(slot=1) if s == "landed" else None for s in signatures]

    chain = Chain()
    batch = BatchStatus(chain)  # type: ignore[arg-type]
    assert batch.status("landed") == SignatureStatus(slot=1)
    assert batch.status("unknown") is None
    assert chain.batches == [["landed"], ["unknown"]]
    assert batch.calls == 2


def test_shared_blockhash_is_the_chains_answer_and_raises_its_error() -> None:
    class Chain:
        def __init__(self) -> None:
            self.answers: list[object] = [("hash-1", 150), OSError("down"), ("hash-2", 151)]

        def latest_blockhash(self) -> object:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    shared = SharedBlockhash(Chain())  # type: ignore[arg-type]
    assert shared() == ("hash-1", 150)
    with pytest.raises(OSError, match="down"):
        shared()
    assert shared() == ("hash-2", 151)
    assert shared.calls == 3
