"""Modes of what a process creates in a directory several service accounts share (issue 17; D2, H3, I).

In production the audit log and the object store are written by the coordinator's account and by the
control worker's, which is a different account so that the coordinator can never read the ledger's keys.
Such a directory belongs to a group of exactly those accounts and carries the setgid bit (runbook:
``install -d -m 2770 -g cyxwiz-data``): what one account creates there is then group-owned and must be
readable and writable by the group, and by no one else (the unit's ``UMask=0007`` keeps others out).
Anywhere else every file stays 0600 and every directory 0700: owner only, as before.
"""

from __future__ import annotations

import os
import stat

PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700
SHARED_FILE, SHARED_DIR = 0o660, 0o770


def is_shared(directory: str | os.PathLike[str]) -> bool:
    """True for a setgid directory: its group is the set of accounts meant to share it."""
    try:
        return bool(os.stat(directory).st_mode & stat.S_ISGID)
    except FileNotFoundError:
        return False


def file_mode(directory: str | os.PathLike[str]) -> int:
    """The mode to create a file with in ``directory`` (never any bit for others)."""
    return SHARED_FILE if is_shared(directory) else PRIVATE_FILE


def dir_mode(parent: str | os.PathLike[str]) -> int:
    """The mode to create a directory with under ``parent`` (it inherits setgid from a shared one)."""
    return SHARED_DIR if is_shared(parent) else PRIVATE_DIR
