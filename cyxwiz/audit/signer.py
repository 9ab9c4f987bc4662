"""Writing signed checkpoints beside the log (SPEC H4), and the audit key a writer must have.

``checkpoint`` (the latest signed note, replaced atomically) is what ``cyxwiz audit prove`` proves
against and what anchoring puts on chain; ``audit-DAY.checkpoints.jsonl`` keeps a history (one note a
minute while events arrive, the last one of each day, and one at every close) so ``verify`` can check
that the log never lost what an older checkpoint covered, and ``consistency`` has old trees to prove.
The writer calls :meth:`CheckpointSigner.write` under its lock, so checkpoints only move forward.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cyxwiz.audit.checkpoint import (
    DEFAULT_ORIGIN,
    check_origin,
    claimed_size,
    sign_checkpoint,
    verify_checkpoint,
)
from cyxwiz.audit.records import CHECKPOINT_FILE, HEAD_FILE, checkpoints_name
from cyxwiz.errors import AuditIntegrityError, ConfigError
from cyxwiz.shared_dir import file_mode

#: A writer signs a fresh checkpoint at most this often while appending (and a timer signs what is left
#: within the same delay once appends stop): far inside the "every 60 s" promise, ~0.1 % of the time.
CHECKPOINT_INTERVAL = 0.1
#: One checkpoint a minute goes to the day's history file (plus each day's last, and one at close).
HISTORY_INTERVAL = 60.0
DEV_KEY_FILE = ".dev-audit-key.pem"

_log = logging.getLogger("cyxwiz.audit")


@dataclass
class CheckpointSigner:
    key: Ed25519PrivateKey
    directory: Path
    origin: str = DEFAULT_ORIGIN
    interval: float = CHECKPOINT_INTERVAL
    history_interval: float = HISTORY_INTERVAL
    signed_at: float = field(default=float("-inf"))
    history_at: float = field(default=float("-inf"))
    signed_size: int = -1

    #: the key's public half, derived once (``covers`` checks the note on disk several times a second)
    public_key: Ed25519PublicKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_origin(self.origin)
        self.public_key = self.key.public_key()

    def due(self, now: float) -> bool:
        return now - self.signed_at >= self.interval

    def write(self, *, size: int, root: bytes, day: date, history: bool = False) -> bytes:
        """Sign the tree head, replace ``checkpoint``, and maybe append it to the day's history."""
        now = time.monotonic()
        note = sign_checkpoint(origin=self.origin, size=size, root=root, key=self.key)
        # Rewritten in place under the writers' lock (readers take it shared, read_latest_checkpoint):
        # a rename would cost a data flush on ext4 (auto_da_alloc) at every checkpoint.
        fd = os.open(
            self.directory / CHECKPOINT_FILE,
            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
            file_mode(self.directory),
        )
        try:
            os.pwrite(fd, note, 0)
            os.ftruncate(fd, len(note))
        finally:
            os.close(fd)
        if history or now - self.history_at >= self.history_interval:
            self._keep(day, note)
            self.history_at = now
        self.signed_at = now
        self.signed_size = size
        return note

    def covers(self, size: int) -> bool:
        """The checkpoint on disk, signed with this log's key by whichever writer, covers records
        1..``size``: when writers in several processes take turns, one checkpoint covers them all, and
        the others' timers have nothing to add. Read without the writers' lock: a checkpoint is only ever
        replaced by a larger one (a torn or foreign note reads as not covering)."""
        try:
            note = (self.directory / CHECKPOINT_FILE).read_bytes()[:16384]
            if claimed_size(note) < size:
                return False  # whatever signed it, it does not cover them: no signature to check
            checkpoint = verify_checkpoint(note, public_key=self.public_key, origin=self.origin)
        except (OSError, AuditIntegrityError):
            return False
        return checkpoint.size >= size

    def _keep(self, day: date, note: bytes) -> None:
        line = json.dumps({"note": note.decode("utf-8")}).encode() + b"\n"
        fd = os.open(
            self.directory / checkpoints_name(day),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            file_mode(self.directory),
        )
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def preserve_latest(self, day: date) -> None:
        """Copy the current ``checkpoint`` into the day's history (evidence, before it is replaced)."""
        try:
            note = (self.directory / CHECKPOINT_FILE).read_bytes()[:16384]
        except OSError:
            return
        if note:
            self._keep(day, note)


def dev_signing_key(directory: Path) -> Ed25519PrivateKey:
    """``--dev`` only: a key kept in the log directory, so digests and checkpoints are still signed.

    It protects nothing against whoever can write the directory; the warning says so on every start.
    """
    from cyxwiz.pki.keys import generate_ed25519, load_private_key, write_private_key

    path = directory / DEV_KEY_FILE
    if not path.exists():
        write_private_key(path, generate_ed25519())
    message = (
        f"DEVELOPMENT MODE: the audit log is signed with a throw-away key kept beside it ({path}); "
        "it proves nothing. Production: pass the audit key (--audit-key / CYXWIZ_AUDIT_SIGNING_KEY)."
    )
    _log.warning(message)
    print(f"WARNING: {message}", file=sys.stderr)
    return load_private_key(path)


def missing_key_error(field_name: str = "signing_key") -> ConfigError:
    return ConfigError(
        "no audit signing key: digests and checkpoints must be signed",
        field=field_name,
        rule="H4",
        hint="pass --audit-key / set CYXWIZ_AUDIT_SIGNING_KEY (Ed25519 PEM, 0600), or --dev (throw-away key)",
    )


def read_latest_checkpoint(directory: Path, *, wait_s: float = 0.5) -> bytes | None:
    """The ``checkpoint`` note as a whole: read under the writers' lock held shared (they rewrite it in
    place holding it exclusively). None if there is none.

    Waits at most ``wait_s`` for the lock, then reads anyway: the holder may be this very process
    (``AuditLog.writes_paused``), and a writer holds it only for microseconds otherwise.
    """
    import fcntl

    path = directory / CHECKPOINT_FILE
    try:
        lock = os.open(directory / HEAD_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        lock = -1
    try:
        deadline = time.monotonic() + wait_s
        while lock >= 0:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
    finally:
        if lock >= 0:
            os.close(lock)  # releases the shared lock
