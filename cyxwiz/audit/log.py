"""The hash-chained, append-only audit log writer (SPEC H3, H4).

Layout of the log directory (0700, files 0600)::

    .head                          the chain's current day; flock'ed by every writer (the write lock)
    audit-2026-11-23.jsonl         the open day: records are appended here
    audit-2026-11-22.jsonl.gz      closed days, gzipped after their digest was written
    audit-2026-11-22.digest.json   signed daily digest (see :mod:`cyxwiz.audit.digest`)
    merkle.tree                    RFC 6962 tree over every record, all levels (:mod:`cyxwiz.audit.tree`)
    checkpoint                     the latest signed checkpoint (C2SP signed note)
    audit-2026-11-23.checkpoints.jsonl   the day's checkpoint history (:mod:`cyxwiz.audit.signer`)

Concurrency: threads of one process serialise on a ``threading.Lock``; processes on one host on an
``flock`` of ``.head``. Under the lock a writer checks that ``.head`` still holds the checkpoint it wrote
last (then nobody else appended and its cached seq/hash are the chain head: one ``pread``); otherwise it
re-reads the head from the day file's last line. It appends the whole line with one ``write(2)`` on an
``O_APPEND`` descriptor (no torn or interleaved lines) after appending its Merkle nodes, and writes the new
``.head``. A failed write spoils ``.head``, so the next writer re-reads the tail, terminates a partial line
and cuts the tree back to the records. ``.head`` is only the writers' cache token: nothing in it is
trusted by ``verify``; the signed checkpoints are what authenticates the log's end.

Every writer holds the audit key (production refuses to open without one; ``dev=True`` uses a throw-away
key and says so loudly) and signs a checkpoint at its first record, at most every
:data:`~cyxwiz.audit.signer.CHECKPOINT_INTERVAL` while appending, within the same delay after the last
append (a timer thread), at day rotation and at close.

Days only move forward: a writer whose clock is behind the chain's day appends to the chain's day, so the
chain never forks across two files. A day file is never written again once the head moved past it; only
then does maintenance seal, gzip, archive and prune it.

Durability (the product default, ``fsync="interval"``): every record reaches the kernel with its own
``write(2)`` (survives a crash of the process), and ``fdatasync`` runs at most once per ``fsync_interval``
seconds and on close (bounds what a power loss can take). ``"always"`` syncs every record, ``"none"`` never.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cyxwiz.audit.checkpoint import DEFAULT_ORIGIN
from cyxwiz.audit.events import SecurityEvent
from cyxwiz.audit.reader import chain_head_before, read_checkpoint, signed_size_hint
from cyxwiz.audit.records import (
    GENESIS,
    HEAD_FILE,
    RecordFormatError,
    append_line,
    log_name,
    parse_line,
)
from cyxwiz.audit.signer import CHECKPOINT_INTERVAL, CheckpointSigner, dev_signing_key, missing_key_error
from cyxwiz.audit.tree_writer import TreeWriter
from cyxwiz.errors import AuditError, AuditIntegrityError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cyxwiz.audit.archive import AuditArchive
    from cyxwiz.audit.maintenance import MaintenanceReport
    from cyxwiz.keys import KeySource

Clock = Callable[[], datetime]
FsyncPolicy = Literal["none", "interval", "always"]

#: Events whose JSON exceeds this are logged with their details replaced by a size note (never dropped).
MAX_EVENT_BYTES = 32 * 1024
_TAIL_CHUNK = 128 * 1024
_HEAD_MAP_BYTES = 256
_serialize = SecurityEvent.__pydantic_serializer__.to_json

_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


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


def _head_day(raw: bytes) -> bytes:
    """The ISO day at the start of ``.head``, or b"" when there is none (new or damaged file)."""
    try:
        date.fromisoformat(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return b""
    return raw


def _checkpoint_timer(ref: weakref.ref[AuditLog], wake: threading.Event, interval: float) -> None:
    """Covers the records that arrived after the last inline checkpoint, once appends pause. Holds the
    log weakly: a log dropped without ``close()`` is not kept alive by its timer."""
    while True:
        if not wake.wait(timeout=30):
            if ref() is None:
                return
            continue
        time.sleep(interval)
        wake.clear()
        log = ref()
        if log is None or log._closed:
            return
        if log._dirty:
            with contextlib.suppress(Exception):
                log.checkpoint()
        del log


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _after_fork_in_child() -> None:
    # A forked child shares the parent's open file descriptions, hence its flock: it must get its own.
    # One log that cannot be reopened (its directory is gone) must not leave the others shared.
    for log in list(_open_logs):
        try:
            log._forget_after_fork()
        except Exception:  # an at-fork hook cannot raise: that log refuses to write instead
            log._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class AuditLog:
    """Append security events to a tamper-evident log directory. Safe across threads and processes."""

    def __init__(
        self,
        *,
        directory: Path,
        signing_key: Ed25519PrivateKey,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
        retention_days: int = 7,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        auto_maintain: bool = True,
        origin: str | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        if retention_days < 1:
            raise ConfigError("must be at least 1", field="retention_days", rule="H3")
        if fsync not in ("none", "interval", "always"):
            raise ConfigError("must be one of none, interval, always", field="fsync", rule="H3")
        if signing_key is None:
            raise missing_key_error()
        if not 0 < checkpoint_interval <= 60:
            raise ConfigError("must be in (0, 60] seconds", field="checkpoint_interval", rule="H4")
        self.directory = directory
        self.signing_key = signing_key
        self.signer = CheckpointSigner(
            key=signing_key,
            directory=directory,
            interval=checkpoint_interval,
            origin=origin or DEFAULT_ORIGIN,
        )
        self.clock: Clock = clock or _system_clock
        self.archive = archive
        self.retention_days = retention_days
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.auto_maintain = auto_maintain
        self._lock = threading.Lock()
        self._maint_thread: threading.Thread | None = None
        self._lock_fd = -1
        self._fd = -1
        self._tree: TreeWriter | None = None
        self._head_map: mmap.mmap | None = None
        self._day = b""  # the day (ISO bytes) whose file self._fd is
        self._size = -1  # file size right after our last write; -1 = unknown
        self._seq = 0
        self._prev_b = GENESIS.encode("ascii")  # hash of the chain head, hex bytes (hot path)
        self._last_sync = time.monotonic()
        self._closed = False
        self._dirty = False  # records of ours not yet covered by a checkpoint we signed
        self._sign_due = float("-inf")  # monotonic time from which the next record signs inline
        self._wake = threading.Event()
        self._timer: threading.Thread | None = None
        self._alert: SecurityEvent | None = None
        self._checkpoint = b"\x00"  # the .head bytes we last wrote; never matches before the first write
        self._day_end = datetime.min.replace(tzinfo=UTC)  # start of the day after the head day
        self._day_end_ts = float("-inf")
        self._open_lock_file()
        _open_logs.add(self)

    @property
    def _prev(self) -> str:
        return self._prev_b.decode("ascii")

    @_prev.setter
    def _prev(self, value: str) -> None:
        self._prev_b = value.encode("ascii")

    @property
    def origin(self) -> str:
        return self.signer.origin

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | Path | KeySource | None = None,
        dev: bool = False,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
        retention_days: int = 7,
        fsync: FsyncPolicy = "interval",
        auto_maintain: bool = True,
        origin: str | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> AuditLog:
        """Open (creating it 0700 if needed) the log in ``directory``.

        ``signing_key`` (an Ed25519 key, the path of its PKCS#8 PEM file (0600), a ``pkcs11:`` URI as that
        path, or a :class:`~cyxwiz.keys.KeySource`) signs checkpoints and daily digests; without one this
        refuses, unless ``dev`` (a throw-away key, loudly warned about).
        ``clock`` returns an aware UTC datetime and decides the day (tests pass a controllable one);
        ``archive`` receives closed days; ``auto_maintain`` seals closed days in a background thread when
        the day rolls over (the scheduled maintenance flow calls :meth:`maintain` as well); ``origin``
        names the log in its checkpoints.
        """
        key = signing_key
        if isinstance(key, Path):
            from cyxwiz.audit.digest import load_signing_key

            key = load_signing_key(key)
        elif key is not None:
            from cyxwiz.keys import KeySource, as_private_key

            if isinstance(key, KeySource):  # e.g. the checkpoint key in a PKCS#11 token (A7)
                key = as_private_key(key)
        if key is None and not dev:
            raise missing_key_error()
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create log directory: {exc.strerror}", path=str(directory)) from None
        if not directory.is_dir():
            raise AuditError("not a directory", path=str(directory))
        if key is None:
            key = dev_signing_key(directory)
        return cls(
            directory=directory,
            signing_key=key,
            clock=clock,
            archive=archive,
            retention_days=retention_days,
            fsync=fsync,
            auto_maintain=auto_maintain,
            origin=origin,
            checkpoint_interval=checkpoint_interval,
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
        dev: bool = False,
    ) -> AuditLog:
        """From ``CYXWIZ_AUDIT_DIR`` (required), ``CYXWIZ_AUDIT_SIGNING_KEY`` (required: path of the
        Ed25519 key that signs checkpoints and digests), ``CYXWIZ_AUDIT_ORIGIN``,
        ``CYXWIZ_AUDIT_RETENTION_DAYS`` (7) and ``CYXWIZ_AUDIT_FSYNC`` (interval)."""
        env = os.environ if environ is None else environ
        directory = env.get("CYXWIZ_AUDIT_DIR")
        if not directory:
            raise ConfigError("not set", field="CYXWIZ_AUDIT_DIR", rule="H3")
        key = env.get("CYXWIZ_AUDIT_SIGNING_KEY")
        if not key and not dev:
            raise missing_key_error("CYXWIZ_AUDIT_SIGNING_KEY")
        try:
            retention = int(env.get("CYXWIZ_AUDIT_RETENTION_DAYS", "7"))
        except ValueError:
            raise ConfigError("must be an integer", field="CYXWIZ_AUDIT_RETENTION_DAYS") from None
        fsync = env.get("CYXWIZ_AUDIT_FSYNC", "interval")
        if fsync not in ("none", "interval", "always"):
            raise ConfigError("must be one of none, interval, always", field="CYXWIZ_AUDIT_FSYNC")
        return cls.open(
            Path(directory),
            signing_key=Path(key) if key else None,
            dev=dev,
            clock=clock,
            archive=archive,
            retention_days=retention,
            fsync=fsync,  # type: ignore[arg-type]
            origin=env.get("CYXWIZ_AUDIT_ORIGIN") or None,
        )

    # --- writing ----------------------------------------------------------------------------------

    def record(self, event: SecurityEvent) -> Receipt:
        """Append ``event`` to the chain; return where it landed (seq, leaf hash: what a memo cites and
        ``cyxwiz audit prove`` proves). Raises :class:`AuditError` only when the disk refuses."""
        data = _serialize(event)
        if len(data) > MAX_EVENT_BYTES:
            data = _serialize(event.model_copy(update={"details": {"truncated_bytes": len(data)}}))
        clock = self.clock
        # The system clock as a float is a tenth of the cost of an aware datetime; the day check only
        # needs the timestamp (a test clock still goes through its datetime).
        now_dt = None if clock is _system_clock else clock()
        now = time.time() if now_dt is None else now_dt.timestamp()
        rolled = False
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", path=str(self.directory))
            lock_fd = self._lock_fd
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    # Fast path (the common case): same day, and the checkpoint is still the one we
                    # wrote, so no other writer appended since and our cached head is the chain head.
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
                        rolled = self._sync_head(now_dt or datetime.fromtimestamp(now, UTC))
                        if self._alert is not None:
                            self._append(_serialize(self._alert))
                            self._alert = None
                    receipt = Receipt(self._seq + 1, self._append(data), event.event_id)
                    mono = time.monotonic()
                    if self.fsync != "none" and (
                        self.fsync == "always" or mono - self._last_sync >= self.fsync_interval
                    ):
                        self._fsync(mono)
                    if mono >= self._sign_due:
                        self._sign()
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                self._forget_head()
                raise AuditError(
                    f"cannot write audit record: {exc.strerror}", path=str(self.directory)
                ) from exc
            if self._dirty and not self._wake.is_set():
                self._start_timer()
                self._wake.set()
        if rolled and self.auto_maintain:
            self._maintain_in_background()
        return receipt

    def checkpoint(self) -> bytes:
        """Sign a checkpoint of the log as it is now (what Rekor's writers wait for); return the note."""
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", path=str(self.directory))
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._sync_current()
                return self._sign()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _sign(self, *, history: bool = False) -> bytes:
        """Under both locks, with the head in sync: sign the tree head and write it out."""
        tree = self._tree
        assert tree is not None
        tree.sync(self._seq, self._fd)  # the stored tree covers every signed checkpoint: proofs never wait
        assert tree.frontier is not None
        note = self.signer.write(
            size=tree.frontier.size,
            root=tree.frontier.root(),
            day=date.fromisoformat(self._day.decode("ascii")),
            history=history,
        )
        self._sign_due = self.signer.signed_at + self.signer.interval
        self._dirty = False
        return note

    def _start_timer(self) -> None:
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Thread(
            target=_checkpoint_timer,
            args=(weakref.ref(self), self._wake, self.signer.interval),
            name="cyxwiz-audit-checkpoint",
            daemon=True,
        )
        self._timer.start()

    def _forget_head(self) -> None:
        """After a failed write: maybe a partial line is on disk. Make every writer (us included)
        re-read the file's tail before its next record, so the partial line gets terminated."""
        self._size = -1
        if self._tree is not None:
            self._tree.forget()
        self._checkpoint = b"\x00"
        with contextlib.suppress(OSError):
            # Overwrites bytes already allocated, so it works even when the disk is full.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                os.pwrite(self._lock_fd, b"%s dirty" % (self._day or b"0000-00-00"), 0)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

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
        self._seq = seq
        self._prev_b = digest
        self._size += len(line)
        self._dirty = True
        # The writers' cache token (unauthenticated): a later writer compares it with what it wrote last.
        token = b"%s %d %s\n" % (self._day, seq, digest)
        head_map = self._head_map
        if head_map is not None:
            head_map[: len(token)] = token  # shared mapping: no system call per record
        else:
            os.pwrite(self._lock_fd, token, 0)
        self._checkpoint = token
        return leaf

    def _write_all(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            # Regular files take the whole write; the loop only matters on a nearly full disk.
            written = os.write(self._fd, view)
            view = view[written:]

    def _fsync(self, now: float) -> None:
        os.fdatasync(self._fd)
        self._last_sync = now

    def _sync_head(self, now: datetime) -> bool:
        """Under the write lock: make (fd, seq, prev, tree) the current chain head. True if the day moved."""
        today = now.astimezone(UTC).date().isoformat().encode("ascii")
        head = _head_day(os.pread(self._lock_fd, 10, 0))
        rolled = False
        if head and today > head:
            # Day rotation: sign the tree as the old day leaves it, into that day's history.
            if (self.directory / log_name(date.fromisoformat(head.decode("ascii")))).exists():
                self._sync_day(head)
                if self._seq:
                    self._sign(history=True)
            rolled = True
        if not head or today > head:
            head = today
            os.pwrite(self._lock_fd, head, 0)
        self._sync_day(head)
        return rolled

    def _sync_current(self) -> None:
        """Under the write lock: sync to the chain's head day without rotating (checkpoint, close)."""
        head = _head_day(os.pread(self._lock_fd, 10, 0))
        if not head:
            self._sync_head(self.clock())
            return
        if not (head == self._day and os.pread(self._lock_fd, 160, 0).startswith(self._checkpoint)):
            self._sync_day(head)

    def _sync_day(self, head: bytes) -> None:
        self._day_end = datetime.combine(
            date.fromisoformat(head.decode("ascii")) + timedelta(days=1), datetime.min.time(), tzinfo=UTC
        )
        self._day_end_ts = self._day_end.timestamp()
        if head == self._day and self._fd >= 0:
            size = os.fstat(self._fd).st_size
            if size != self._size:  # someone else wrote since our last record: re-read the head
                self._seq, self._prev, self._size = self._read_tail(self._fd, size)
                self._compare_checkpoint()
            self._sync_tree()
            return
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        day = date.fromisoformat(head.decode("ascii"))
        path = self.directory / log_name(day)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._day = head
        size = os.fstat(self._fd).st_size
        if size:
            self._seq, self._prev, self._size = self._read_tail(self._fd, size)
        else:
            self._seq, self._prev = chain_head_before(self.directory, day)
            self._size = 0
        self._compare_checkpoint()
        self._sync_tree()

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
        written = max(written, signed_size_hint(self.directory))
        if written > self._seq:
            from cyxwiz.audit.events import integrity_alert

            # Keep the signed evidence before the next checkpoint replaces it: the old note goes to history.
            self.signer.preserve_latest(date.fromisoformat(self._day.decode("ascii")))
            self._alert = integrity_alert(
                resource=f"audit:{self.directory.name}",
                reason=f"log ends at seq {self._seq} but seq {written} had been written: records removed",
            )

    def _read_tail(self, fd: int, size: int) -> tuple[int, str, int]:
        """(seq, hash) of the last good record in the open day file, and the file size after repair."""
        start = max(0, size - _TAIL_CHUNK)
        chunk = os.pread(fd, size - start, start)
        if not chunk.endswith(b"\n"):
            # A torn last line (crash or full disk mid-write): end it so ours starts on its own line.
            # The chain continues from the last intact record; `verify` reports the torn line.
            self._write_all(b"\n")
            size += 1
        lines = chunk.rstrip(b"\n").split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first piece may be a partial line
        for raw in reversed(lines):
            try:
                rec = parse_line(raw)
            except RecordFormatError:
                continue
            return rec.seq, rec.hash, size
        if start == 0 and not any(lines):
            day = date.fromisoformat(self._day.decode("ascii"))
            seq, prev = chain_head_before(self.directory, day)
            return seq, prev, size
        raise AuditIntegrityError(
            "no intact record at the end of the open day file; run `cyxwiz audit verify`",
            path=str(self.directory / log_name(date.fromisoformat(self._day.decode("ascii")))),
            rule="H4",
        )

    # --- maintenance --------------------------------------------------------------------------------

    def maintain(self) -> MaintenanceReport:
        """Seal (digest), gzip, archive and prune closed days; safe to call from any process any time."""
        from cyxwiz.audit.maintenance import run_maintenance

        return run_maintenance(self)

    def advance_head(self, now: datetime) -> date:
        """Move the chain's day forward to ``now``'s day (never back); return the head day."""
        with self._lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                today = now.astimezone(UTC).date().isoformat().encode("ascii")
                head = _head_day(os.pread(self._lock_fd, 10, 0))
                if not head or today > head:
                    head = today
                    os.pwrite(self._lock_fd, head, 0)
                return date.fromisoformat(head.decode("ascii"))
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _maintain_in_background(self) -> None:
        thread = self._maint_thread
        if thread is not None and thread.is_alive():
            return

        def work() -> None:
            # Never let maintenance trouble reach a request handler; the scheduled flow retries it.
            with contextlib.suppress(Exception):
                self.maintain()

        self._maint_thread = threading.Thread(target=work, name="cyxwiz-audit-maintain", daemon=True)
        self._maint_thread.start()

    def wait_for_maintenance(self, timeout: float | None = None) -> None:
        thread = self._maint_thread
        if thread is not None:
            thread.join(timeout)

    # --- lifecycle ----------------------------------------------------------------------------------

    def _open_lock_file(self) -> None:
        self._lock_fd = os.open(self.directory / HEAD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._tree = TreeWriter(directory=self.directory)
        self._head_map = None
        with contextlib.suppress(OSError, ValueError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._lock_fd).st_size < _HEAD_MAP_BYTES:
                    os.ftruncate(self._lock_fd, _HEAD_MAP_BYTES)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            # The writers' token is compared and rewritten on every record: a shared mapping of it saves
            # a pread and a pwrite per record (coherent with other processes through the page cache).
            self._head_map = mmap.mmap(self._lock_fd, _HEAD_MAP_BYTES)

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._maint_thread = None
        self._timer = None
        self._wake = threading.Event()
        self._close_map()
        for fd in (self._lock_fd, self._fd, self._tree.file.fd if self._tree else -1):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock_fd = -1
        self._fd = -1
        self._tree = None  # the parent writes its own buffered nodes; ours start from the file
        self._day = b""
        self._size = -1
        self._checkpoint = b"\x00"
        self._dirty = False  # the parent signs what it wrote; the child signs its own records
        if not self._closed:
            self._open_lock_file()

    def _close_map(self) -> None:
        if self._head_map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._head_map.close()
            self._head_map = None

    @contextlib.contextmanager
    def writes_paused(self) -> Iterator[bytes]:
        """Sign a checkpoint that covers every record, then hold every writer (threads here and other
        processes) off the log while the block runs, e.g. to verify it in place: the log stays open for
        the services that still write to it. Yields the checkpoint note."""
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", path=str(self.directory))
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self._sync_current()
                yield self._sign()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Sign a last checkpoint (so every record is covered), sync and close."""
        self.wait_for_maintenance()
        with self._lock:
            if self._closed:
                return
            _open_logs.discard(self)
            if self._dirty:
                with contextlib.suppress(OSError, AuditError):
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                    try:
                        self._sync_current()
                        self._sign(history=True)
                    finally:
                        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._closed = True
            self._wake.set()
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
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
