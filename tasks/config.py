"""Where the control plane's parts live, from one JSON file (``CYXWIZ_CONTROL_PLANE``) or env vars.

The lifecycle and maintenance flows run in the trusted zone; this file names the CA, the ledger config,
the object store, the audit directory and the coordinator. Secrets are not in it: passphrases and master
keys come from the control worker's env vars (``*_FILE``: systemd credentials), never from a Prefect block.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cyxwiz.errors import ConfigError

ENV_VAR = "CYXWIZ_CONTROL_PLANE"


@dataclass(frozen=True, kw_only=True)
class ControlPlaneConfig:
    home: Path
    pki_root: Path
    ledger_config: Path
    store_root: Path
    audit_dir: Path
    coordinator_url: str | None = None
    coordinator_db: str | None = None
    #: Token key ring directory (``DirKeyRingStore``) rotated by the ``signing-key-rotation`` flow.
    keyring_dir: Path | None = None
    #: Node name (certificate CN) -> wallet address that escrow releases pay.
    node_wallets: dict[str, str] = field(default_factory=dict)
    #: The deployment nodes run (``flow-name/deployment-name``).
    train_deployment: str = "sandboxed-train/sandboxed-train"
    #: Seconds added to a job's wall-time limit before the control plane gives up on the node.
    dispatch_margin_s: int = 120
    #: A node whose heartbeat is older than this while it holds a job is lost: the job is re-dispatched.
    node_lost_s: int = 60
    #: A RUNNING flow run without a Prefect flow-run heartbeat for this long is dead (tasks.sweep).
    run_silent_s: int = 450
    #: Federation trust policy (docs/federation.md): node certificates of every organization in it are
    #: judged by it (verification), as the listeners do; None: the dev/production PKI under ``pki_root``.
    trust_policy: Path | None = None
    #: The issuer service's socket: the ``crl-refresh`` flow asks it for a freshly signed CRL. The control
    #: plane holds no CA key (issue 17): with the ledger's keys it could mint a verifier and move funds.
    issuer_socket: Path | None = None

    @classmethod
    def from_file(cls, path: Path) -> ControlPlaneConfig:
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("control-plane config file not found", path=str(path)) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc.msg} at line {exc.lineno}", path=str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError("must be a JSON object", path=str(path))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown keys {unknown}", path=str(path))
        for name in ("home", "pki_root", "ledger_config", "store_root", "audit_dir"):
            if name not in raw:
                raise ConfigError("required key missing", field=name, path=str(path))
            raw[name] = Path(raw[name])
        for optional in ("keyring_dir", "trust_policy", "issuer_socket"):
            if raw.get(optional) is not None:
                raw[optional] = Path(raw[optional])
        return cls(**raw)

    @classmethod
    def from_env(cls) -> ControlPlaneConfig:
        value = os.environ.get(ENV_VAR)
        if not value:
            raise ConfigError(f"set {ENV_VAR} to the control-plane config file", field=ENV_VAR)
        return cls.from_file(Path(value))

    def to_file(self, path: Path) -> None:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


#: The config's paths the control plane opens: what it trusts (CA bundle, ledger keys, store, audit log).
TRUSTED_PATHS = (
    "home", "pki_root", "ledger_config", "store_root", "audit_dir", "keyring_dir", "trust_policy",
    "issuer_socket",
)  # fmt: skip


def _private_group(gid: int) -> bool:
    """This account's own group, which no other account is in (as a member or as its primary group): a
    clone made under umask 002 with user-private groups is group-writable, and only its owner can write."""
    import grp
    import pwd

    if gid != os.getegid():
        return False
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
        members = set(grp.getgrgid(gid).gr_mem) - {me}
    except KeyError:
        return False
    return not members and all(p.pw_gid != gid or p.pw_uid == os.geteuid() for p in pwd.getpwall())


def check_trusted_paths(config: ControlPlaneConfig, *, source: str) -> None:
    """Refuse a config (from a Prefect block: any API client can rewrite it) naming a path that another
    account could have written: each existing component of each path is owned by this process's user
    or root, and writable by nobody else (a root-owned sticky directory such as /tmp excepted; group-write
    only by a group private to this account, as under umask 002 with user-private groups). So the
    coordinator or gateway, which hold the API credential, cannot point the control worker at a CA,
    ledger config or key file of their own (issue 17; SPEC F1, C3)."""
    allowed = {0, os.geteuid()}
    for name in TRUSTED_PATHS:
        value = getattr(config, name)
        if value is None:
            continue
        path = Path(value)
        if not path.is_absolute():
            raise ConfigError(f"{source}: the path must be absolute", field=name, path=str(path), rule="F1")
        for part in (path, *path.parents):
            try:
                info = part.lstat()
            except FileNotFoundError:
                continue  # created later by the control plane itself, under a checked ancestor
            shared = info.st_mode & stat.S_IWOTH or (
                info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid)
            )
            sticky_root = info.st_uid == 0 and stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
            if info.st_uid not in allowed or (shared and not sticky_root):
                raise ConfigError(
                    f"{source}: {part} is owned by uid {info.st_uid} or writable by others; the control "
                    "plane opens only files its own account controls",
                    field=name, path=str(path), rule="F1",
                )  # fmt: skip
