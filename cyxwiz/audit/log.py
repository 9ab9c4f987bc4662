"""The hash-chained, append-only audit log writer (SPEC H3, H4).

Layout of the log directory (0700, files 0600)::

    .head                          the chain's current day; flock'ed by every writer (the write lock)
    audit-2026-11-23.jsonl         the open day: records are appended here
    audit-2026-11-22.jsonl.gz      closed days, gzipped after their digest was written
    audit-2026-11-22.digest.json   signed daily digest (see :mod:`cyxwiz.audit.digest`)

Concurrency: threads of one process serialise on a ``threading.Lock``; processes on one host on an
``flock`` of ``.head``. Under the lock a writer checks that ``.head`` still holds the checkpoint it wrote
last (then nobody else appended and its cached seq/hash are the chain head: one ``pread``); otherwise it
re-reads the head from the day file's last line. It appends the whole line with one ``write(2)`` on an
``O_APPEND`` descriptor (no torn or interleaved lines) and writes the new checkpoint. A failed write
spoils the checkpoint, so the next writer re-reads the tail and terminates a partial line.

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
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cyxwiz.audit.events import SecurityEvent
from cyxwiz.audit.reader import chain_head_before, read_checkpoint
from cyxwiz.audit.records import (
    GENESIS,
    HEAD_FILE,
    RecordFormatError,
    build_line,
    log_name,
    parse_line,
)
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
_serialize = SecurityEvent.__pydantic_serializer__.to_json

_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _system_clock() -> datetime:
    return datetime.now(UTC)


def _after_fork_in_child() -> None:
    # A forked child shares the parent's open file descriptions, hence its flock: it must get its own.
    for log in list(_open_logs):
        log._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class AuditLog:
    """Append security events to a tamper-evident log directory. Safe across threads and processes."""

    def __init__(
        self,
        *,
        directory: Path,
        signing_key: Ed25519PrivateKey | None = None,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
        retention_days: int = 7,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        auto_maintain: bool = True,
    ) -> None:
        if retention_days < 1:
            raise ConfigError("must be at least 1", field="retention_days", rule="H3")
        if fsync not in ("none", "interval", "always"):
            raise ConfigError("must be one of none, interval, always", field="fsync", rule="H3")
        self.directory = directory
        self.signing_key = signing_key
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
        self._day = b""  # the day (ISO bytes) whose file self._fd is
        self._size = -1  # file size right after our last write; -1 = unknown
        self._seq = 0
        self._prev = GENESIS
        self._last_sync = time.monotonic()
        self._closed = False
        self._alert: SecurityEvent | None = None
        self._checkpoint = b"\x00"  # the .head bytes we last wrote; never matches before the first write
        self._day_end = datetime.min.replace(tzinfo=UTC)  # start of the day after the head day
        self._open_lock_file()
        _open_logs.add(self)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | Path | KeySource | None = None,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
        retention_days: int = 7,
        fsync: FsyncPolicy = "interval",
        auto_maintain: bool = True,
    ) -> AuditLog:
        """Open (creating it 0700 if needed) the log in ``directory``.

        ``signing_key`` signs the daily digests (an Ed25519 key, the path of its PKCS#8 PEM file, a
        ``pkcs11:`` URI as that path, or a :class:`~cyxwiz.keys.KeySource`);
        ``clock`` returns an aware UTC datetime and decides the day (tests pass a controllable one);
        ``archive`` receives closed days; ``auto_maintain`` seals closed days in a background thread when
        the day rolls over (the scheduled maintenance flow calls :meth:`maintain` as well).
        """
        key = signing_key
        if isinstance(key, Path):
            from cyxwiz.audit.digest import load_signing_key

            key = load_signing_key(key)
        elif key is not None:
            from cyxwiz.keys import KeySource, as_private_key

            if isinstance(key, KeySource):  # e.g. the checkpoint key in a PKCS#11 token (A7)
                key = as_private_key(key)
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create log directory: {exc.strerror}", path=str(directory)) from None
        if not directory.is_dir():
            raise AuditError("not a directory", path=str(directory))
        return cls(
            directory=directory,
            signing_key=key,
            clock=clock,
            archive=archive,
            retention_days=retention_days,
            fsync=fsync,
            auto_maintain=auto_maintain,
        )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Clock | None = None,
        archive: AuditArchive | None = None,
    ) -> AuditLog:
        """From ``CYXWIZ_AUDIT_DIR`` (required), ``CYXWIZ_AUDIT_SIGNING_KEY`` (path of the Ed25519 key
        that signs digests), ``CYXWIZ_AUDIT_RETENTION_DAYS`` (7) and ``CYXWIZ_AUDIT_FSYNC`` (interval)."""
        env = os.environ if environ is None else environ
        directory = env.get("CYXWIZ_AUDIT_DIR")
        if not directory:
            raise ConfigError("not set", field="CYXWIZ_AUDIT_DIR", rule="H3")
        key = env.get("CYXWIZ_AUDIT_SIGNING_KEY")
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
            clock=clock,
            archive=archive,
            retention_days=retention,
            fsync=fsync,  # type: ignore[arg-type]
        )

    # --- writing ----------------------------------------------------------------------------------

    def record(self, event: SecurityEvent) -> None:
        """Append ``event`` to the chain. Raises :class:`AuditError` only when the disk refuses."""
        data = _serialize(event)
        if len(data) > MAX_EVENT_BYTES:
            data = _serialize(event.model_copy(update={"details": {"truncated_bytes": len(data)}}))
        now = self.clock()
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
                    if not (now < self._day_end and os.pread(lock_fd, 160, 0).startswith(self._checkpoint)):
                        rolled = self._sync_head(now)
                        if self._alert is not None:
                            self._append(_serialize(self._alert))
                            self._alert = None
                    self._append(data)
                    if self.fsync != "none":
                        self._maybe_fsync()
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                self._forget_head()
                raise AuditError(
                    f"cannot write audit record: {exc.strerror}", path=str(self.directory)
                ) from exc
        if rolled and self.auto_maintain:
            self._maintain_in_background()

    def _forget_head(self) -> None:
        """After a failed write: maybe a partial line is on disk. Make every writer (us included)
        re-read the file's tail before its next record, so the partial line gets terminated."""
        self._size = -1
        self._checkpoint = b"\x00"
        with contextlib.suppress(OSError):
            # Overwrites bytes already allocated, so it works even when the disk is full.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                os.pwrite(self._lock_fd, b"%s dirty" % (self._day or b"0000-00-00"), 0)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _append(self, data: bytes) -> None:
        line, digest = build_line(self._seq + 1, self._prev, data)
        self._write_all(line)
        self._seq += 1
        self._prev = digest
        self._size += len(line)
        # Checkpoint of the chain head beside the data: a later writer or `verify` compares it with the
        # file, so cutting records off the end of the open day does not go unnoticed.
        checkpoint = b"%s %d %s\n" % (self._day, self._seq, digest.encode("ascii"))
        os.pwrite(self._lock_fd, checkpoint, 0)
        self._checkpoint = checkpoint

    def _write_all(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            # Regular files take the whole write; the loop only matters on a nearly full disk.
            written = os.write(self._fd, view)
            view = view[written:]

    def _maybe_fsync(self) -> None:
        now = time.monotonic()
        if self.fsync == "always" or now - self._last_sync >= self.fsync_interval:
            os.fdatasync(self._fd)
            self._last_sync = now

    def _sync_head(self, now: datetime) -> bool:
        """Under the write lock: make (fd, seq, prev) the current chain head. True if the day moved."""
        today = now.astimezone(UTC).date().isoformat().encode("ascii")
        head = os.pread(self._lock_fd, 10, 0)
        rolled = False
        if len(head) != 10 or today > head:
            if len(head) == 10:
                rolled = True
            head = today
            os.pwrite(self._lock_fd, head, 0)
        self._day_end = datetime.combine(
            date.fromisoformat(head.decode("ascii")) + timedelta(days=1), datetime.min.time(), tzinfo=UTC
        )
        if head == self._day and self._fd >= 0:
            size = os.fstat(self._fd).st_size
            if size == self._size:
                return rolled  # nobody else wrote since our last record: the cache is the head
            self._seq, self._prev, self._size = self._read_tail(self._fd, size)
            self._compare_checkpoint()
            return rolled
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
        return rolled

    def _compare_checkpoint(self) -> None:
        """After re-reading the chain head from the files: did records vanish since the last write?"""
        checkpoint = read_checkpoint(self.directory)
        if checkpoint is None:
            return
        _, seq, digest = checkpoint
        if seq > self._seq or (seq == self._seq and digest != self._prev):
            from cyxwiz.audit.events import integrity_alert

            self._alert = integrity_alert(
                resource=f"audit:{self.directory.name}",
                reason=f"log ends at seq {self._seq} but seq {seq} had been written: records removed",
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
                head = os.pread(self._lock_fd, 10, 0)
                if len(head) != 10 or today > head:
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

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._maint_thread = None
        for fd in (self._lock_fd, self._fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = -1
        self._day = b""
        self._size = -1
        self._checkpoint = b"\x00"
        if not self._closed:
            self._open_lock_file()

    def close(self) -> None:
        self.wait_for_maintenance()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                with contextlib.suppress(OSError):
                    if self.fsync != "none":
                        os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
