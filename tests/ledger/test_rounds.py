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


def _ask_in_thread(rounds: SharedRounds[str, int], key: str, out: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = rounds.ask(key)
        except Exception as exc:
            out[key] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


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


def test_askers_during_a_round_share_the_next_one_never_the_running_one() -> None:
    """Keys asked while a round runs are not answered by it (fetched before they asked): they share the
    next round, one call for all of them."""
    clock = _Clock()
    rounds: SharedRounds[str, int] = SharedRounds(clock)
    clock.release.clear()
    out: dict[str, object] = {}
    first = _ask_in_thread(rounds, "first", out)
    assert clock.entered.wait(5)
    late = [_ask_in_thread(rounds, f"k{i}", out) for i in range(5)]
    _wait_for_waiters(rounds, 6)
    clock.release.set()
    for thread in (first, *late):
        thread.join(5)
    assert out["first"] == 1
    assert {out[f"k{i}"] for i in range(5)} == {2}  # all from call 2, which started after they asked
    assert clock.calls[0] == ["first"]
    assert sorted(clock.calls[1]) == [f"k{i}" for i in range(5)]
    assert rounds.calls == 2
    assert not rounds._answers and not rounds._readers  # every round's answer was read and dropped


def test_the_same_key_asked_twice_in_a_round_answers_both() -> None:
    clock = _Clock()
    rounds: SharedRounds[str, int] = SharedRounds(clock)
    clock.release.clear()
    out: dict[str, object] = {}
    first = _ask_in_thread(rounds, "first", out)
    assert clock.entered.wait(5)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(rounds.ask("same"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for_waiters(rounds, 4)
    clock.release.set()
    for thread in (first, *threads):
        thread.join(5)
    assert results == [2, 2, 2]
    assert clock.calls[1] == ["same"]


def test_a_failed_round_raises_in_its_leader_and_the_others_ask_again() -> None:
    clock = _Clock()
    rounds: SharedRounds[str, int] = SharedRounds(clock)
    clock.release.clear()
    out: dict[str, object] = {}
    leader = _ask_in_thread(rounds, "leader", out)
    assert clock.entered.wait(5)
    clock.fail_call = 2  # the second round (the one the waiters share) fails
    waiters = [_ask_in_thread(rounds, f"w{i}", out) for i in range(3)]
    _wait_for_waiters(rounds, 4)
    clock.release.set()
    for thread in (leader, *waiters):
        thread.join(5)
    assert out["leader"] == 1
    failed = [v for k, v in out.items() if k.startswith("w") and isinstance(v, OSError)]
    answered = [v for k, v in out.items() if k.startswith("w") and isinstance(v, int)]
    assert len(failed) == 1, out  # the one who led the failing round, as its own call would have
    assert len(answered) == 2 and all(v >= 3 for v in answered), out  # from a later, successful round
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
