"""Rounds shared by the processes of one host (F2): never an answer fetched before the question, one call
for everyone who asked while none had started, each signature's own status, and no stall after a failed
call or a leader that died mid-round.

Each "process" here is its own :class:`HostBlockhash` / :class:`HostStatuses` on the same file: its own
open file, so its ``flock`` excludes the others' exactly as another process's would; one test runs real
processes.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from solders.hash import Hash
from solders.keypair import Keypair

from cyxwiz.ledger.chain import SignatureStatus
from cyxwiz.ledger.hostrounds import HostBlockhash, HostStatuses

REPO = Path(__file__).resolve().parents[2]


class Chain:
    """A fake chain's look-ups that number every call when it *starts* (what freshness is judged by)."""

    def __init__(self, *, delay: float = 0.002) -> None:
        self.started = 0
        self.batches: list[list[str]] = []
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_next = False
        self._lock = threading.Lock()

    def _start(self) -> int:
        with self._lock:
            self.started += 1
            number = self.started
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("ledger RPC unreachable")
        return number

    def blockhash(self) -> tuple[Hash, int]:
        number = self._start()
        return Hash(number.to_bytes(32, "big")), number

    def statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        self.batches.append(list(signatures))
        number = self._start()
        return [_expected(sig, number) for sig in signatures]


def _expected(signature: str, number: int) -> SignatureStatus | None:
    """A status that names the signature (so a mix-up shows) and the call that fetched it."""
    digest = hashlib.sha256(signature.encode()).digest()
    if digest[0] % 3 == 0:
        return None  # not landed yet
    return SignatureStatus(slot=number, err=None if digest[1] % 2 else f"Custom({digest[2]})")


def _signatures(n: int) -> list[str]:
    return [str(Keypair().sign_message(os.urandom(8))) for _ in range(n)]


def test_blockhash_is_never_one_fetched_before_the_question(tmp_path: Path) -> None:
    chain = Chain()
    path = tmp_path / "escrow.db-blockhash"
    processes = [HostBlockhash(path=path, fetch=chain.blockhash) for _ in range(6)]
    stale: list[tuple[int, int]] = []

    def ask(host: HostBlockhash) -> None:
        for _ in range(30):
            asked = chain.started  # calls started before this question
            blockhash, height = host()
            if height <= asked or blockhash != Hash(height.to_bytes(32, "big")):
                stale.append((asked, height))

    threads = [threading.Thread(target=ask, args=(host,)) for host in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert stale == []
    assert chain.started == sum(host.calls for host in processes)
    assert chain.started < 6 * 30  # questions asked during a call shared the next one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_askers_during_a_call_share_the_next_round_not_the_running_one(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    path = tmp_path / "escrow.db-blockhash"
    leader, *waiters = (HostBlockhash(path=path, fetch=chain.blockhash) for _ in range(4))
    chain.gate = threading.Event()
    results: dict[str, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__("leader", leader()[1]))
    first.start()
    assert chain.entered.wait(5)  # round 1 is running: it started before the waiters ask
    others = [
        threading.Thread(target=lambda h=h, i=i: results.__setitem__(f"w{i}", h()[1]))
        for i, h in enumerate(waiters)
    ]
    for t in others:
        t.start()
    time.sleep(0.2)  # every waiter queued behind round 1
    chain.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert results["leader"] == 1
    assert {results[f"w{i}"] for i in range(3)} == {2}  # one later round for all three
    assert chain.started == 2


def test_a_failed_round_raises_in_its_leader_and_the_others_ask_again(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    path = tmp_path / "escrow.db-blockhash"
    leader, waiter = (
        HostBlockhash(path=path, fetch=chain.blockhash),
        HostBlockhash(path=path, fetch=chain.blockhash),
    )
    chain.gate, chain.fail_next = threading.Event(), True
    errors: list[BaseException] = []
    got: list[int] = []

    def lead() -> None:
        try:
            leader()
        except ConnectionError as exc:
            errors.append(exc)

    t1 = threading.Thread(target=lead)
    t1.start()
    assert chain.entered.wait(5)
    # the waiter asks for round 2 while round 1 runs; make round 2 the failed one's successor
    t2 = threading.Thread(target=lambda: got.append(waiter()[1]))
    t2.start()
    time.sleep(0.1)
    chain.gate.set()
    t1.join(10)
    t2.join(10)
    assert [type(e) for e in errors] == [ConnectionError]
    assert got == [2]  # its own attempt, after the failure: never the failed round's nothing
    # positive control: a later question is answered by a fresh call
    assert leader()[1] == 3


def test_a_leader_that_died_mid_round_leaves_no_stall(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    path = tmp_path / "escrow.db-blockhash"
    host = HostBlockhash(path=path, fetch=chain.blockhash)
    assert host()[1] == 1
    # what kill -9 between "round started" and "round finished" leaves: started ahead of finished
    with path.open("r+b") as fh:
        fh.write(struct.pack("<Q", 2))
    other = HostBlockhash(path=path, fetch=chain.blockhash)
    assert other()[1] == 2
    assert host()[1] == 3


def test_statuses_of_concurrent_askers_are_each_their_own_and_fresh(tmp_path: Path) -> None:
    chain = Chain()
    path = tmp_path / "escrow.db-statuses"
    processes = [HostStatuses(path=path, fetch=chain.statuses) for _ in range(6)]
    problems: list[str] = []
    asks = 0

    def ask(host: HostStatuses, seed: int) -> None:
        nonlocal asks
        rng = random.Random(seed)
        pool = _signatures(12)
        for _ in range(25):
            mine = rng.sample(pool, rng.randint(1, 4))
            asked = chain.started
            answer = host(mine)
            asks += 1
            for sig, status in zip(mine, answer, strict=True):
                if status is None:
                    if _expected(sig, 0) is not None:
                        problems.append(f"{sig}: none")
                    continue
                if status.slot <= asked:
                    problems.append(f"{sig}: fetched by call {status.slot}, asked after call {asked} started")
                if status != _expected(sig, status.slot):
                    problems.append(f"{sig}: another signature's status {status}")

    threads = [threading.Thread(target=ask, args=(host, i)) for i, host in enumerate(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert problems == []
    assert asks == 6 * 25
    assert len(chain.batches) == sum(host.calls for host in processes) < asks  # some calls were shared
    assert max(len(batch) for batch in chain.batches) > 4  # ... holding several askers' signatures


def test_statuses_queued_during_a_call_go_out_together_in_the_next(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    path = tmp_path / "escrow.db-statuses"
    leader, a, b = (HostStatuses(path=path, fetch=chain.statuses) for _ in range(3))
    first, mine_a, mine_b = _signatures(1), _signatures(2), _signatures(3)
    chain.gate = threading.Event()
    got: dict[str, list[SignatureStatus | None]] = {}
    t0 = threading.Thread(target=lambda: got.__setitem__("leader", leader(first)))
    t0.start()
    assert chain.entered.wait(5)
    ta = threading.Thread(target=lambda: got.__setitem__("a", a(mine_a)))
    tb = threading.Thread(target=lambda: got.__setitem__("b", b(mine_b)))
    ta.start()
    tb.start()
    time.sleep(0.2)
    chain.gate.set()
    for t in (t0, ta, tb):
        t.join(10)
    assert chain.batches[0] == first
    assert sorted(chain.batches[1]) == sorted(mine_a + mine_b)
    assert len(chain.batches) == 2
    assert got["a"] == [_expected(s, 2) for s in mine_a]
    assert got["b"] == [_expected(s, 2) for s in mine_b]


def test_a_statuses_leader_that_died_leaves_its_askers_to_ask_again(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    path = tmp_path / "escrow.db-statuses"
    host = HostStatuses(path=path, fetch=chain.statuses)
    sigs = _signatures(2)
    assert host(sigs) == [_expected(s, 1) for s in sigs]
    with path.open("r+b") as fh:  # round 2 started and took the queue, then its leader was killed
        fh.write(struct.pack("<Q", 2))
    assert HostStatuses(path=path, fetch=chain.statuses)(sigs) == [_expected(s, 2) for s in sigs]


def test_real_processes_get_their_own_statuses(tmp_path: Path) -> None:
    path = str(tmp_path / "escrow.db-statuses")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ledger._hostrounds_worker", path, str(seed)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        for seed in range(4)
    ]
    results = [w.communicate(timeout=60)[0].split() for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0]
    assert [int(wrong) for wrong, _ in results] == [0, 0, 0, 0]
    assert sum(int(calls) for _, calls in results) <= 4 * 40


def test_a_leader_killed_mid_call_frees_the_round_for_the_others(tmp_path: Path) -> None:
    path = tmp_path / "escrow.db-statuses"
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger._hostrounds_worker", str(path), "0", "hang"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "leading"
        chain = Chain(delay=0)
        waiter = HostStatuses(path=path, fetch=chain.statuses)
        mine = _signatures(2)
        got: list[list[SignatureStatus | None]] = []
        t = threading.Thread(target=lambda: got.append(waiter(mine)))
        t.start()
        time.sleep(0.3)
        assert got == []  # queued behind the victim's round, which holds the lock through its call
        os.kill(victim.pid, 9)
        t.join(10)
        assert got == [[_expected(s, 1) for s in mine]]  # its round, led once the kernel freed the lock
        assert chain.batches == [mine]  # the dead round's signature went with it
    finally:
        victim.kill()
        victim.wait(10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_takes_its_own_lock(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    host = HostBlockhash(path=tmp_path / "bh", fetch=chain.blockhash)
    host()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child_fd = host._file.fd
            host()
            os._exit(0 if host._file.fd != child_fd else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_planted_symlink_is_not_followed_and_the_question_is_still_answered(tmp_path: Path) -> None:
    chain = Chain(delay=0)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    (tmp_path / "escrow.db-blockhash").symlink_to(target)
    (tmp_path / "escrow.db-statuses").symlink_to(target)
    sigs = _signatures(2)
    assert HostBlockhash(path=tmp_path / "escrow.db-blockhash", fetch=chain.blockhash)()[1] == 1
    assert HostStatuses(path=tmp_path / "escrow.db-statuses", fetch=chain.statuses)(sigs) == [
        _expected(s, 2) for s in sigs
    ]
    assert target.read_bytes() == b"keep me"  # never opened through the link, never grown or mapped
    # positive control: a plain path shares rounds through its file
    plain = HostBlockhash(path=tmp_path / "plain-blockhash", fetch=chain.blockhash)
    assert plain()[1] == 3
    assert plain.calls == 1
    assert (tmp_path / "plain-blockhash").stat().st_size > 0


def test_an_escrow_database_on_disk_gets_its_rounds_files_beside_it(tmp_path: Path) -> None:
    from cyxwiz.ledger.store import EscrowStore

    store = EscrowStore.open(f"sqlite:///{tmp_path / 'escrow.db'}")
    try:
        assert store.rounds_files == (tmp_path / "escrow.db-blockhash", tmp_path / "escrow.db-statuses")
    finally:
        store.dispose()
    memory = EscrowStore.open("sqlite://")
    try:
        assert memory.rounds_files is None  # nothing to share with: one process
    finally:
        memory.dispose()


def test_processes_at_another_commitment_never_share_status_answers(tmp_path: Path) -> None:
    from cyxwiz.ledger.rounds import BatchStatus

    class Rpc:
        def __init__(self, commitment: str) -> None:
            self.commitment = commitment
            self.asked: list[list[str]] = []
            self.gate: threading.Event | None = None
            self.entered = threading.Event()

        def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
            self.asked.append(list(signatures))
            self.entered.set()
            if self.gate is not None:
                self.gate.wait(10)
            return [SignatureStatus(slot=1) if self.commitment == "confirmed" else None for _ in signatures]

    host_file = tmp_path / "escrow.db-statuses"
    confirmed = [Rpc("confirmed") for _ in range(2)]
    finalized = Rpc("finalized")
    leader, other = (BatchStatus(rpc, host_file=host_file) for rpc in confirmed)  # type: ignore[arg-type]
    strict = BatchStatus(finalized, host_file=host_file)  # type: ignore[arg-type]
    first, mine, theirs = _signatures(3)
    confirmed[0].gate = threading.Event()
    got: dict[str, SignatureStatus | None] = {}
    t0 = threading.Thread(target=lambda: got.__setitem__("first", leader.status(first)))
    t0.start()
    assert confirmed[0].entered.wait(5)  # a round runs: the two below queue for the next one
    t1 = threading.Thread(target=lambda: got.__setitem__("theirs", other.status(theirs)))
    t2 = threading.Thread(target=lambda: got.__setitem__("mine", strict.status(mine)))
    t1.start()
    t2.start()
    time.sleep(0.2)
    confirmed[0].gate.set()
    for t in (t0, t1, t2):
        t.join(10)
    # the finalized process asked its own chain, for its own signature only, and got its answer
    assert finalized.asked == [[mine]]
    assert got["mine"] is None
    # positive control: the confirmed ones shared their rounds as usual
    assert got["first"] == got["theirs"] == SignatureStatus(slot=1)
    assert [theirs] in confirmed[0].asked + confirmed[1].asked
