"""Rounds shared by the processes of one host: one ``getLatestBlockhash`` or ``getSignatureStatuses`` for
every lifecycle that asked while none had started (F2).

Prefect's process worker runs each job lifecycle, with its escrow, in a process of its own, so the
in-process rounds of :mod:`cyxwiz.ledger.rounds` merge nothing there: every escrow move paid a round trip
for its blockhash and one for its confirmation. These classes keep the rounds' rule across processes, on
small files next to the escrow database (the processes of one ledger share them, and nothing else does):

1. a caller notes the number of the next round to start (and, for statuses, queues its signatures for it
   under the queue's lock: the round that takes them is that one);
2. it takes the data file's exclusive ``flock`` (a round's leader holds it through the call);
3. if that round has finished meanwhile, it started after the caller asked, so its answer is as fresh as a
   call of the caller's own: it is the caller's. Otherwise the caller leads it, still holding the lock,
   for everyone who asked before it started.

Nothing is cached: an answer fetched before the caller asked is never used. A round whose call raised is
marked failed and whoever shared it asks again, making its own attempt (the leader's error is raised in
the leader, as its own call's would be); a leader that died mid-round leaves its round unfinished and its
askers ask again. The files hold public data only (blockhashes, signatures, statuses) and sit in the
ledger's private state directory with the database, whose writers could stall any escrow already; a
forged answer is no more than a lying RPC node, which the intent protocol already survives: a transaction
signed over a forged blockhash is refused, and a forged status is checked by the sweep against the chain.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from solders.hash import Hash
from solders.signature import Signature

from cyxwiz.ledger.chain import SignatureStatus
from cyxwiz.shared_dir import file_mode

_U64 = struct.Struct("<Q")
# Both data files begin with three counters, each written by one side under its own lock: rounds
# *started* (by a leader holding both locks), rounds *finished* (by a leader, holding the data file's lock)
# and signatures *queued* for the next round (under the queue's lock; always 0 in the blockhash file,
# whose rounds take no keys). Nobody reads them without a lock.
_STARTED, _FINISHED, _QUEUED = 0, 8, 16
#: blockhash file, after the counters: answer ok, last valid height, blockhash
_BLOCKHASH_AT = 24
_BLOCKHASH = struct.Struct("<QQ32s")
_QUEUE_AT = 64
#: signatures one round takes at most (``getSignatureStatuses`` answers up to 256 in one call)
QUEUE_MAX = 256
_SLOTS_AT = _QUEUE_AT + QUEUE_MAX * 64
_SLOT_HEADER = struct.Struct("<QQQ")  # round, ok, length of the answer's JSON
_SLOT_SIZE = 64 * 1024
#: answers kept: a caller queued for one round reads it even when a few later rounds finished first
_SLOTS = 8
_STATUSES_SIZE = _SLOTS_AT + _SLOTS * _SLOT_SIZE


class _SharedFile:
    """A zero-filled file mapped by this process, reopened in a forked child (a descriptor shared with
    the parent would share its ``flock``). Owner-only, or group-shared in a shared state directory
    (:mod:`cyxwiz.shared_dir`), like everything else there."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._pid = -1
        self.fd = -1
        self.map: mmap.mmap | None = None

    def open(self) -> mmap.mmap:
        if self._pid == os.getpid() and self.map is not None:
            return self.map
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, file_mode(self.path.parent))
        try:
            if os.fstat(fd).st_size < self.size:
                os.ftruncate(fd, self.size)  # zeros: no round started, none finished, nothing queued
            shared = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        self._pid, self.fd, self.map = os.getpid(), fd, shared
        return shared

    @contextlib.contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        shared = self.open()
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield shared
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.map is not None and self._pid == os.getpid():
            self.map.close()
            os.close(self.fd)
        self.map, self.fd, self._pid = None, -1, -1


class _HostRounds:
    """A data file (its ``flock`` held by a round's leader through the call) and a queue file (its
    ``flock`` held briefly, around the counters of rounds started and things queued)."""

    def __init__(self, *, path: Path, size: int) -> None:
        self._file = _SharedFile(path, size)
        self._queue = _SharedFile(Path(f"{path}.queue"), 8)
        self._lock = threading.Lock()  # flock belongs to the open file: threads must take turns here
        #: rounds this process led (benches and tests read it)
        self.calls = 0

    def _opened(self) -> mmap.mmap | None:
        """The data file's mapping; None where the files cannot be opened: sharing is an optimisation,
        and a state directory without it asks alone."""
        try:
            shared = self._file.open()
            self._queue.open()
        except OSError:
            return None
        return shared

    def close(self) -> None:
        with self._lock:
            self._file.close()
            self._queue.close()


class HostBlockhash(_HostRounds):
    """``fetch() -> (blockhash, last valid height)`` shared by every process using ``path``."""

    def __init__(self, *, path: Path, fetch: Callable[[], tuple[Hash, int]]) -> None:
        super().__init__(path=path, size=_BLOCKHASH_AT + _BLOCKHASH.size)
        self._fetch = fetch

    def __call__(self) -> tuple[Hash, int]:
        with self._lock:
            shared = self._opened()
            if shared is None:
                return self._fetch()
            with self._queue.locked():
                round_no = _get(shared, _STARTED) + 1  # the first round to start after this call
            with self._file.locked():
                if _get(shared, _FINISHED) >= round_no:
                    ok, height, blockhash = _BLOCKHASH.unpack_from(shared, _BLOCKHASH_AT)
                    if ok == 1:
                        return Hash(blockhash), height
                with self._queue.locked():
                    round_no = _get(shared, _STARTED) + 1
                    _U64.pack_into(shared, _STARTED, round_no)  # whoever asks from now needs a later round
                self.calls += 1
                try:
                    fresh, valid = self._fetch()
                except BaseException:
                    _BLOCKHASH.pack_into(shared, _BLOCKHASH_AT, 0, 0, bytes(32))
                    _U64.pack_into(shared, _FINISHED, round_no)
                    raise
                _BLOCKHASH.pack_into(shared, _BLOCKHASH_AT, 1, valid, bytes(fresh))
                _U64.pack_into(shared, _FINISHED, round_no)
                return fresh, valid


def _get(shared: mmap.mmap, at: int) -> int:
    return int(_U64.unpack_from(shared, at)[0])


Statuses = list[SignatureStatus | None]


class HostStatuses(_HostRounds):
    """``fetch(signatures) -> statuses`` shared by every process using ``path`` (and ``path.queue``)."""

    def __init__(self, *, path: Path, fetch: Callable[[list[str]], Statuses]) -> None:
        super().__init__(path=path, size=_STATUSES_SIZE)
        self._fetch = fetch

    def __call__(self, signatures: list[str]) -> Statuses:
        if not signatures:
            return []
        if len(signatures) > QUEUE_MAX:
            return self._fetch(signatures)
        with self._lock:
            if self._opened() is None:
                return self._fetch(signatures)
            while True:
                ticket = self._enqueue(signatures)
                if ticket is None:  # the queue is full: an answer of its own, as without sharing
                    return self._fetch(signatures)
                round_no, first = ticket
                with self._file.locked() as shared:
                    if _get(shared, _FINISHED) >= round_no:
                        answer = _read_slot(shared, round_no)
                        if answer is not None and len(answer) >= first + len(signatures):
                            return answer[first : first + len(signatures)]
                    elif _get(shared, _STARTED) < round_no:
                        return self._lead(shared, round_no)[first : first + len(signatures)]
                # a failed round, one whose leader died, or an answer overwritten since: ask again

    def _enqueue(self, signatures: list[str]) -> tuple[int, int] | None:
        """Queue ``signatures`` for the next round to start: (its number, their first index in it)."""
        shared = self._file.open()
        raw = b"".join(bytes(Signature.from_string(s)) for s in signatures)
        with self._queue.locked():
            queued = _get(shared, _QUEUED)
            if queued + len(signatures) > QUEUE_MAX:
                return None
            shared[_QUEUE_AT + queued * 64 : _QUEUE_AT + (queued + len(signatures)) * 64] = raw
            _U64.pack_into(shared, _QUEUED, queued + len(signatures))
            return _get(shared, _STARTED) + 1, queued

    def _lead(self, shared: mmap.mmap, round_no: int) -> Statuses:
        """Run round ``round_no`` (holding the data file's lock): every queued signature in one call."""
        with self._queue.locked():
            queued = _get(shared, _QUEUED)
            batch = [
                str(Signature(shared[_QUEUE_AT + i * 64 : _QUEUE_AT + i * 64 + 64])) for i in range(queued)
            ]
            _U64.pack_into(shared, _QUEUED, 0)
            _U64.pack_into(shared, _STARTED, round_no)
        self.calls += 1
        try:
            answer = self._fetch(batch)
        except BaseException:
            _write_slot(shared, round_no, None)
            raise
        _write_slot(shared, round_no, answer)
        return answer


def _write_slot(shared: mmap.mmap, round_no: int, answer: Statuses | None) -> None:
    data = (
        b""
        if answer is None
        else json.dumps([None if s is None else [s.slot, s.err] for s in answer]).encode()
    )
    ok = answer is not None and _SLOT_HEADER.size + len(data) <= _SLOT_SIZE
    at = _SLOTS_AT + round_no % _SLOTS * _SLOT_SIZE
    if ok:
        shared[at + _SLOT_HEADER.size : at + _SLOT_HEADER.size + len(data)] = data
    _SLOT_HEADER.pack_into(shared, at, round_no, int(ok), len(data) if ok else 0)
    _U64.pack_into(shared, _FINISHED, round_no)


def _read_slot(shared: mmap.mmap, round_no: int) -> Statuses | None:
    """Round ``round_no``'s statuses; None when it failed or its slot holds a later round by now."""
    at = _SLOTS_AT + round_no % _SLOTS * _SLOT_SIZE
    slot_round, ok, length = _SLOT_HEADER.unpack_from(shared, at)
    if slot_round != round_no or ok != 1:
        return None
    items = json.loads(shared[at + _SLOT_HEADER.size : at + _SLOT_HEADER.size + length])
    return [None if s is None else SignatureStatus(slot=int(s[0]), err=s[1]) for s in items]
