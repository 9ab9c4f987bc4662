"""The chain's end on disk, as one writer sees it (SPEC H3, H4): the open day file, the ``.head`` token,
the Merkle tree and the checkpoints this writer signs.

:class:`ChainWriter` does the file work of :class:`~cyxwiz.audit.log.AuditLog`; every method that reads
or moves the chain head runs with the log's thread lock and the ``flock`` of ``.head`` held (the log
takes both). The protocol those locks protect is described in :mod:`cyxwiz.audit.log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from cyxwiz.audit.events import SecurityEvent
from cyxwiz.audit.reader import chain_head_before, read_checkpoint, signed_size_hint
from cyxwiz.audit.records import (
    CHECKPOINT_FILE,
    GENESIS,
    HEAD_FILE,
    RecordFormatError,
    append_line,
    log_name,
    parse_line,
)
from cyxwiz.audit.signer import CheckpointSigner
from cyxwiz.audit.tree_writer import TreeWriter
from cyxwiz.errors import AuditIntegrityError
from cyxwiz.shared_dir import file_mode

Clock = Callable[[], datetime]
FsyncPolicy = Literal["none", "interval", "always"]

_TAIL_CHUNK = 128 * 1024
_TAIL_FIRST_CHUNK = 4 * 1024
_HEAD_MAP_BYTES = 256
#: ``.head`` begins with the ISO day of the chain head (``YYYY-MM-DD``)
_DAY_BYTES = 10
#: where in ``.head`` writers share when the last checkpoint was signed (CLOCK_MONOTONIC, one per host)
_SIGNED_AT = 200
_SIGNED_AT_FORMAT = struct.Struct("<d")
#: after taking the log over from another process, a writer writes its Merkle nodes with each record for
#: this many records: the next writer then loads the tree's frontier instead of re-hashing our records
_SHARED_RECORDS = 64
_HASH_HEX = 64
_serialize = SecurityEvent.__pydantic_serializer__.to_json


def head_day(raw: bytes) -> bytes:
    """The ISO day at the start of ``.head``, or b"" when there is none (new or damaged file)."""
    try:
        date.fromisoformat(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return b""
    return raw


def _day_of(head: bytes) -> date:
    return date.fromisoformat(head.decode("ascii"))


class Receipt:
    """Where an event landed: its seq (leaf index + 1) and RFC 6962 leaf hash, and its event id."""

    __slots__ = ("event_id", "leaf", "seq")

    def __init__(self, seq: int, leaf: bytes, event_id: str) -> None:
        self.seq = seq
        self.leaf = leaf
        self.event_id = event_id

    @property
    def leaf_hash(self) -> str:
        """Hex leaf hash: what an escrow memo cites and ``cyxwiz audit prove`` proves included."""
        return self.leaf.hex()

    def __repr__(self) -> str:
        return f"Receipt(seq={self.seq}, leaf_hash={self.leaf_hash}, event_id={self.event_id})"


class ChainWriter:
    """One writer's cached view of the chain head and the descriptors it appends through."""

    def __init__(
        self,
        *,
        directory: Path,
        signer: CheckpointSigner,
        fsync: FsyncPolicy,
        fsync_interval: float,
    ) -> None:
        self.directory = directory
        self.signer = signer
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.lock_fd = -1
        self._fd = -1
        self._tree: TreeWriter | None = None
        self._head_map: mmap.mmap | None = None
        self._day = b""  # the day (ISO bytes) whose file self._fd is
        #: the checkpoint file's path, read at every hand-over (no path object built each time)
        self._checkpoint_file = os.fsencode(directory / CHECKPOINT_FILE)
        self._size = -1  # file size right after our last write; -1 = unknown
        self._seq = 0
        self._prev_b = GENESIS.encode("ascii")  # hash of the chain head, hex bytes (hot path)
        self._last_sync = time.monotonic()
        #: Records of ours not yet covered by a checkpoint we signed.
        self.dirty = False
        self._sign_due = float("-inf")  # monotonic time from which the next record signs inline
        self._alert: SecurityEvent | None = None
        self._checkpoint = b"\x00"  # the .head bytes we last wrote; never matches before the first write
        self._day_end_ts = float("-inf")  # start of the day after the head day
        #: records left to write with their Merkle nodes flushed (another process took turns lately)
        self._shared = 0
        self.open_lock_file()

    @property
    def _prev(self) -> str:
        return self._prev_b.decode("ascii")

    @_prev.setter
    def _prev(self, value: str) -> None:
        self._prev_b = value.encode("ascii")

    # --- the write path (both locks held) -----------------------------------------------------------

    def write(self, data: bytes, now: float, now_dt: datetime | None) -> tuple[int, bytes, bool]:
        """Append one serialised event: (its seq, its leaf hash, whether the day rolled over)."""
        rolled = False
        # Fast path (the common case): same day, and the checkpoint is still the one we wrote, so no
        # other writer appended since and our cached head is the chain head.
        head_map = self._head_map
        cp = self._checkpoint
        tree = self._tree
        if not (
            now < self._day_end_ts
            and head_map is not None
            and head_map[: len(cp)] == cp
            and tree is not None
            and tree.frontier is not None
        ):
            if now < self._day_end_ts and head_map is not None and head_map[:_DAY_BYTES] == self._day:
                # Another writer appended since ours, and today is not after the day we are on, which
                # .head names: no rotation, only the head to find (what sync_head would do then)
                self._sync_day(self._day)
            else:
                rolled = self.sync_head(now_dt or datetime.fromtimestamp(now, UTC))
            if self._alert is not None:
                self._append(_serialize(self._alert))
                self._alert = None
        elif self._shared:
            self._shared -= 1
        seq = self._seq + 1
        leaf = self._append(data)
        mono = time.monotonic()
        if self.fsync != "none" and (self.fsync == "always" or mono - self._last_sync >= self.fsync_interval):
            os.fdatasync(self._fd)
            self._last_sync = mono
        if mono >= self._sign_due and not self._signed_lately(mono):
            self.sign()
        return seq, leaf, rolled

    def _signed_lately(self, mono: float) -> bool:
        """Another writer (another process) signed a checkpoint within the interval: the next one is due
        from then, not from our own last one. Writers in many processes taking turns (a lifecycle each, the
        verifier service) would otherwise each sign every interval. A writer's first record always signs;
        what the other checkpoint does not cover, the timer signs (``AuditLog._checkpoint_unless_covered``)
        """
        head_map = self._head_map
        if head_map is None or self.signer.signed_at == float("-inf"):
            return False
        (last,) = _SIGNED_AT_FORMAT.unpack_from(head_map, _SIGNED_AT)
        if not last <= mono < last + self.signer.interval:  # never, or long ago (or another clock)
            return False
        self._sign_due = last + self.signer.interval
        return True

    @property
    def head_seq(self) -> int:
        """The chain head's seq as this writer last saw it (its own last record, or later)."""
        return self._seq

    def sign(self, *, history: bool = False) -> bytes:
        """With the head in sync: sign the tree head and write it out."""
        tree = self._tree
        assert tree is not None
        tree.sync(self._seq, self._fd)  # the stored tree covers every signed checkpoint: proofs never wait
        assert tree.frontier is not None
        note = self.signer.write(
            size=tree.frontier.size,
            root=tree.frontier.root(),
            day=_day_of(self._day),
            history=history,
        )
        self._sign_due = self.signer.signed_at + self.signer.interval
        if self._head_map is not None:
            _SIGNED_AT_FORMAT.pack_into(self._head_map, _SIGNED_AT, self.signer.signed_at)
        self.dirty = False
        return note

    def forget_head(self) -> None:
        """After a failed write: maybe a partial line is on disk. Make every writer (us included)
        re-read the file's tail before its next record, so the partial line gets terminated."""
        self._size = -1
        if self._tree is not None:
            self._tree.forget()
        self._checkpoint = b"\x00"
        with contextlib.suppress(OSError):
            # Overwrites bytes already allocated, so it works even when the disk is full.
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                os.pwrite(self.lock_fd, b"%s dirty" % (self._day or b"0000-00-00"), 0)
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def _append(self, data: bytes) -> bytes:
        tree = self._tree
        assert tree is not None
        seq = self._seq + 1
        line, digest, leaf = append_line(seq, self._prev_b, data)
        # The leaf joins the tree before the line is written; nodes reach the file in batches (a lost or
        # stale batch is recomputed from the records by the next writer, see TreeWriter.sync).
        tree.add(leaf)
        written = os.write(self._fd, line)
        if written != len(line):
            self._write_all(line[written:])  # only on a nearly full disk: files take whole writes
        if self._shared:
            tree.flush()  # before the token: the next writer finds the tree whole (TreeWriter.sync)
        self._seq = seq
        self._prev_b = digest
        start = self._size
        self._size += len(line)
        self.dirty = True
        # The writers' cache token (unauthenticated): a later writer compares it with what it wrote last,
        # and one taking over finds the chain head in it, at the offset of the line it names.
        token = b"%s %d %s %d\n" % (self._day, seq, digest, start)
        head_map = self._head_map
        if head_map is not None:
            head_map[: len(token)] = token  # shared mapping: no system call per record
        else:
            os.pwrite(self.lock_fd, token, 0)
        self._checkpoint = token
        return leaf

    def _write_all(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            # Regular files take the whole write; the loop only matters on a nearly full disk.
            written = os.write(self._fd, view)
            view = view[written:]

    # --- finding the chain head (both locks held) ---------------------------------------------------

    def sync_head(self, now: datetime) -> bool:
        """Make (fd, seq, prev, tree) the current chain head. True if the day moved."""
        today = now.astimezone(UTC).date().isoformat().encode("ascii")
        head = head_day(os.pread(self.lock_fd, 10, 0))
        rolled = False
        if head and today > head:
            # Day rotation: sign the tree as the old day leaves it, into that day's history.
            if (self.directory / log_name(_day_of(head))).exists():
                self._sync_day(head)
                if self._seq:
                    self.sign(history=True)
            rolled = True
        if not head or today > head:
            head = today
            os.pwrite(self.lock_fd, head, 0)
        self._sync_day(head)
        return rolled

    def sync_current(self, clock: Clock) -> None:
        """Sync to the chain's head day without rotating (checkpoint, close)."""
        head = head_day(os.pread(self.lock_fd, 10, 0))
        if not head:
            self.sync_head(clock())
            return
        if not (head == self._day and os.pread(self.lock_fd, 160, 0).startswith(self._checkpoint)):
            self._sync_day(head)

    def advance_head(self, now: datetime) -> date:
        """Move the chain's day forward to ``now``'s day (never back); return the head day."""
        today = now.astimezone(UTC).date().isoformat().encode("ascii")
        head = head_day(os.pread(self.lock_fd, 10, 0))
        if not head or today > head:
            head = today
            os.pwrite(self.lock_fd, head, 0)
        return _day_of(head)

    def _sync_day(self, head: bytes) -> None:
        if head == self._day and self._fd >= 0:
            size = os.fstat(self._fd).st_size
            if size != self._size:  # someone else wrote since our last record: find the head
                self._shared = _SHARED_RECORDS
                if not self._head_from_token(size):
                    self._seq, self._prev, self._size = self._read_tail(self._fd, size)
                    self._compare_checkpoint()
            self._sync_tree()
            return
        day = _day_of(head)
        self._day_end_ts = datetime.combine(
            day + timedelta(days=1), datetime.min.time(), tzinfo=UTC
        ).timestamp()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        path = self.directory / log_name(day)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, file_mode(path.parent))
        self._day = head
        size = os.fstat(self._fd).st_size
        if size:
            self._seq, self._prev, self._size = self._read_tail(self._fd, size)
        else:
            self._seq, self._prev = chain_head_before(self.directory, day)
            self._size = 0
        self._compare_checkpoint()
        self._sync_tree()

    def _head_from_token(self, size: int) -> bool:
        """The chain head as the last writer left it in ``.head``: its day, seq and hash, and the offset of
        its line, which must be the day file's last line and begin with that hash and seq (one read of
        that line, no parse). Anything else (a spoiled token after a failed write, a crash between the
        line and the token, a torn line, another day, a seq behind what this writer saw) is False: the
        caller reads the tail.

        Like the tail, the token is nobody's word for what the records say: a next record chains to this
        hash, and ``verify`` checks every link against the records themselves."""
        token = self._token()
        if token is None:
            return False
        seq, digest, start = token
        # a record's line is far shorter than the tail's longest read: a token naming an early offset of a
        # long file (forged) costs no more than reading the tail would
        if not (0 <= start < size and size - start <= _TAIL_CHUNK and seq >= max(self._seq, 1)):
            return False
        line = os.pread(self._fd, size - start, start)
        if not (
            line.endswith(b"\n")
            and line.count(b"\n") == 1
            and line.startswith(b'{"hash":"%s","seq":%d,"prev":"' % (digest, seq))
            and (start == 0 or os.pread(self._fd, 1, start - 1) == b"\n")
        ):
            return False
        self._seq, self._prev_b, self._size = seq, digest, size
        self._compare_signed()
        return True

    def _token(self) -> tuple[int, bytes, int] | None:
        """(seq, hash, line offset) from ``.head`` when it names the open day, else None."""
        if self._head_map is None:
            return None
        parts = self._head_map[:_SIGNED_AT].split(b"\n", 1)[0].split(b" ")
        if len(parts) != 4 or parts[0] != self._day or len(parts[2]) != _HASH_HEX:
            return None
        if parts[2].strip(b"0123456789abcdef"):  # the next record's prev: lowercase hex only
            return None
        try:
            return int(parts[1]), parts[2], int(parts[3])
        except ValueError:
            return None

    def _sync_tree(self) -> None:
        assert self._tree is not None
        self._tree.sync(self._seq, self._fd)

    def _compare_checkpoint(self) -> None:
        """After re-reading the chain head from the files: did records vanish since the last write?"""
        written = 0
        checkpoint = read_checkpoint(self.directory)
        if checkpoint is not None:
            written = checkpoint[1]
            if checkpoint[1] == self._seq and checkpoint[2] != self._prev:
                written = self._seq + 1
        self._compare_signed(written)

    def _compare_signed(self, written: int = 0) -> None:
        """Records vanished if the latest checkpoint (or ``written``) claims more than the head holds."""
        written = max(written, signed_size_hint(self._checkpoint_file))
        if written > self._seq:
            from cyxwiz.audit.events import integrity_alert

            # Keep the signed evidence before the next checkpoint replaces it: the old note goes to history.
            self.signer.preserve_latest(_day_of(self._day))
            self._alert = integrity_alert(
                resource=f"audit:{self.directory.name}",
                reason=f"log ends at seq {self._seq} but seq {written} had been written: records removed",
            )

    def _read_tail(self, fd: int, size: int) -> tuple[int, str, int]:
        """(seq, hash) of the last good record in the open day file, and the file size after repair.

        Read from the end in growing pieces (another process's last record is usually all there is to
        find): re-reading the head after every hand-over between writers costs one small read."""
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A torn last line (crash or full disk mid-write): end it so ours starts on its own line.
            # The chain continues from the last intact record; `verify` reports the torn line.
            self._write_all(b"\n")
            size += 1
        piece = _TAIL_FIRST_CHUNK
        while True:
            start = max(0, size - piece)
            lines = os.pread(fd, size - start, start).rstrip(b"\n").split(b"\n")
            if start > 0:
                lines = lines[1:]  # the first piece may be a partial line
            for raw in reversed(lines):
                try:
                    rec = parse_line(raw)
                except RecordFormatError:
                    continue
                return rec.seq, rec.hash, size
            if start == 0 or piece >= _TAIL_CHUNK:
                break
            piece = min(piece * 8, _TAIL_CHUNK)
        if start == 0 and not any(lines):
            seq, prev = chain_head_before(self.directory, _day_of(self._day))
            return seq, prev, size
        raise AuditIntegrityError(
            "no intact record at the end of the open day file; run `cyxwiz audit verify`",
            path=str(self.directory / log_name(_day_of(self._day))),
            rule="H4",
        )

    # --- descriptors --------------------------------------------------------------------------------

    def open_lock_file(self) -> None:
        self.lock_fd = os.open(
            self.directory / HEAD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode(self.directory)
        )
        self._tree = TreeWriter(directory=self.directory)
        self._head_map = None
        with contextlib.suppress(OSError, ValueError):
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self.lock_fd).st_size < _HEAD_MAP_BYTES:
                    os.ftruncate(self.lock_fd, _HEAD_MAP_BYTES)
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            # The writers' token is compared and rewritten on every record: a shared mapping of it saves
            # a pread and a pwrite per record (coherent with other processes through the page cache).
            self._head_map = mmap.mmap(self.lock_fd, _HEAD_MAP_BYTES)

    def forget_after_fork(self, *, reopen: bool) -> None:
        """In a forked child: drop the parent's descriptors (and so its flock); reopen our own."""
        self._close_map()
        for fd in (self.lock_fd, self._fd, self._tree.file.fd if self._tree else -1):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.lock_fd = -1
        self._fd = -1
        self._tree = None  # the parent writes its own buffered nodes; ours start from the file
        self._day = b""
        self._size = -1
        self._checkpoint = b"\x00"
        self.dirty = False  # the parent signs what it wrote; the child signs its own records
        if reopen:
            self.open_lock_file()

    def close(self) -> None:
        """Close every descriptor; the day file is synced first unless the policy is ``none``."""
        if self._tree is not None:
            # Its batch went out with the last checkpoint, under the lock; the tree is derived data,
            # never synced (whatever is lost is recomputed from the records by the next writer).
            self._tree.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if self.fsync != "none":
                    os.fdatasync(self._fd)
            os.close(self._fd)
        self._fd = -1
        self._close_map()
        os.close(self.lock_fd)
        self.lock_fd = -1

    def _close_map(self) -> None:
        if self._head_map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._head_map.close()
            self._head_map = None
