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
takes the head from the token the last writer left there (day, seq, hash and the offset of its line),
believed only where the day file's last line begins with that hash and seq at that offset, and else
re-reads the head from the day file's last line. It appends the whole line with one ``write(2)`` on an
``O_APPEND`` descriptor (no torn or interleaved lines), and writes the new ``.head``; a writer that took
the log over from another process lately writes its Merkle nodes with each record, before the token, so
the next one finds the tree whole. A failed write spoils ``.head``, so the next writer re-reads the tail,
terminates a partial line and cuts the tree back to the records. ``.head`` is only the writers' cache
token: nothing in it is trusted by ``verify``; the signed checkpoints are what authenticates the log's end.

Every writer holds the audit key (production refuses to open without one; ``dev=True`` uses a throw-away
key and says so loudly) and signs a checkpoint at its first record, at most every
:data:`~cyxwiz.audit.signer.CHECKPOINT_INTERVAL` while appending (counted from the last checkpoint any
writer signed, which ``.head`` records), within the same delay after the last append unless another
writer's checkpoint covers its records (a timer thread), at day rotation and at close.

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
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cyxwiz.audit.checkpoint import DEFAULT_ORIGIN
from cyxwiz.audit.events import SecurityEvent
from cyxwiz.audit.signer import CHECKPOINT_INTERVAL, CheckpointSigner, dev_signing_key, missing_key_error
from cyxwiz.audit.writer import ChainWriter, Clock, FsyncPolicy, Receipt
from cyxwiz.errors import AuditError, ConfigError
from cyxwiz.shared_dir import dir_mode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cyxwiz.audit.archive import AuditArchive
    from cyxwiz.audit.maintenance import MaintenanceReport
    from cyxwiz.keys import KeySource

__all__ = ["MAX_EVENT_BYTES", "AuditLog", "Clock", "FsyncPolicy", "Receipt"]

#: Events whose JSON exceeds this are logged with their details replaced by a size note (never dropped).
MAX_EVENT_BYTES = 32 * 1024
_serialize = SecurityEvent.__pydantic_serializer__.to_json

_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


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
        if log._writer.dirty:
            with contextlib.suppress(Exception):
                log._checkpoint_unless_covered()
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
        self._closed = False
        self._wake = threading.Event()
        self._timer: threading.Thread | None = None
        self._writer = ChainWriter(
            directory=directory, signer=self.signer, fsync=fsync, fsync_interval=fsync_interval
        )
        _open_logs.add(self)

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
            directory.mkdir(mode=dir_mode(directory.parent), parents=True, exist_ok=True)
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
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", path=str(self.directory))
            writer = self._writer
            lock_fd = writer.lock_fd
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                try:
                    seq, leaf, rolled = writer.write(data, now, now_dt)
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            except OSError as exc:
                writer.forget_head()
                raise AuditError(
                    f"cannot write audit record: {exc.strerror}", path=str(self.directory)
                ) from exc
            if writer.dirty and not self._wake.is_set():
                self._start_timer()
                self._wake.set()
        if rolled and self.auto_maintain:
            self._maintain_in_background()
        return Receipt(seq, leaf, event.event_id)

    def checkpoint(self) -> bytes:
        """Sign a checkpoint of the log as it is now (what Rekor's writers wait for); return the note."""
        with self.writes_paused() as note:
            return note

    @contextlib.contextmanager
    def writes_paused(self) -> Iterator[bytes]:
        """Sign a checkpoint that covers every record, then hold every writer (threads here and other
        processes) off the log while the block runs, e.g. to verify it in place: the log stays open for
        the services that still write to it. Yields the checkpoint note."""
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", path=str(self.directory))
            fcntl.flock(self._writer.lock_fd, fcntl.LOCK_EX)
            try:
                self._writer.sync_current(self.clock)
                yield self._writer.sign()
            finally:
                fcntl.flock(self._writer.lock_fd, fcntl.LOCK_UN)

    def _checkpoint_unless_covered(self) -> None:
        """The timer's checkpoint, unless one another writer signed since covers every record this one
        knows of: writers in several processes taking turns (a lifecycle, the verifier service) would
        each sign the same records, each after catching the tree up."""
        with self._lock:
            writer = self._writer
            if writer.signer.covers(writer.head_seq):
                writer.dirty = False
                return
        self.checkpoint()

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

    # --- maintenance --------------------------------------------------------------------------------

    def maintain(self) -> MaintenanceReport:
        """Seal (digest), gzip, archive and prune closed days; safe to call from any process any time."""
        from cyxwiz.audit.maintenance import run_maintenance

        return run_maintenance(self)

    def advance_head(self, now: datetime) -> date:
        """Move the chain's day forward to ``now``'s day (never back); return the head day."""
        with self._lock:
            fcntl.flock(self._writer.lock_fd, fcntl.LOCK_EX)
            try:
                return self._writer.advance_head(now)
            finally:
                fcntl.flock(self._writer.lock_fd, fcntl.LOCK_UN)

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

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._maint_thread = None
        self._timer = None
        self._wake = threading.Event()
        self._writer.forget_after_fork(reopen=not self._closed)

    def close(self) -> None:
        """Sign a last checkpoint (so every record is covered), sync and close."""
        self.wait_for_maintenance()
        with self._lock:
            if self._closed:
                return
            _open_logs.discard(self)
            writer = self._writer
            if writer.dirty:
                with contextlib.suppress(OSError, AuditError):
                    fcntl.flock(writer.lock_fd, fcntl.LOCK_EX)
                    try:
                        writer.sync_current(self.clock)
                        writer.sign(history=True)
                    finally:
                        fcntl.flock(writer.lock_fd, fcntl.LOCK_UN)
            self._closed = True
            self._wake.set()
            writer.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
