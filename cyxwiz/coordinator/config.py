"""The production coordinator's configuration file (``cyxwiz serve coordinator --config FILE``).

Every part the coordinator stands on is named here and checked before anything listens: TLS identity and
CRL (D1, A6), its database and audit log (H2), the ledger it reads (no key: wallet views and the terms a
user's client signs, F1/C2), the object store it presigns for (D2, D3), and the Prefect API its control
channel starts lifecycle runs on. A missing part stops the start with one line naming it; the permissive
development hooks exist only behind ``--dev``.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyxwiz.errors import ConfigError

#: JSON keys -> what the production coordinator uses them for (the refusal names both).
REQUIRED: dict[str, str] = {
    "cert": "its TLS certificate",
    "key": "its TLS private key",
    "bundle": "the CA bundle that verifies nodes and users",
    "crl": "the CRL (revoked nodes are refused at handshake, A6)",
    "state_dir": "a state directory (token key ring)",
    "audit_dir": "an audit log directory (H2)",
    "ledger_config": "the ledger it reads balances and escrow terms from (F1)",
    "store_root": "the object store it presigns job inputs and outputs for (D3)",
    "store_master_key_file": "the object store's master key file (D2)",
    "prefect_api_url": "the Prefect API its control channel starts job-lifecycle runs on",
}
_OPTIONAL = {"issuer_socket", "db_url", "host", "port", "lifecycle_deployment", "public_url"}
_FILES = ("cert", "key", "bundle", "crl", "ledger_config", "store_master_key_file")
DEV_WARNING = (
    "DEVELOPMENT MODE (--dev): permissive hooks — no escrow, no ledger, any completion proof accepted. "
    "Never expose this coordinator to real users or nodes."
)


@dataclass(frozen=True, kw_only=True)
class CoordinatorConfig:
    cert: Path
    key: Path
    bundle: Path
    crl: Path
    state_dir: Path
    audit_dir: Path
    ledger_config: Path
    store_root: Path
    store_master_key_file: Path
    prefect_api_url: str
    #: The issuer service's Unix socket (node renewal, online revocation); the CA key is never here.
    issuer_socket: Path | None = None
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8443
    lifecycle_deployment: str = "job-lifecycle/job-lifecycle"
    #: The URL nodes reach this coordinator at (presigned object URLs point here); default https://host:port.
    public_url: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> CoordinatorConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("coordinator config file not found", path=str(path), field="config") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"coordinator config is not JSON: {exc}", path=str(path), field="config"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError("coordinator config must be a JSON object", path=str(path), field="config")
        if "ca_dir" in raw:
            # A CA key on the internet-facing host mints any certificate there, a verifier's included.
            raise ConfigError(
                "the coordinator holds no CA key (issue 17)",
                field="ca_dir",
                path=str(path),
                rule="A7",
                hint="run the issuer service (python -m cyxwiz.issuer serve), name its socket issuer_socket",
            )
        unknown = sorted(set(raw) - set(REQUIRED) - _OPTIONAL)
        if unknown:
            raise ConfigError(f"unknown keys {unknown}", path=str(path), field="config")
        for name, what in REQUIRED.items():
            if raw.get(name) in (None, ""):
                raise ConfigError(
                    f"the production coordinator needs {what}",
                    field=name,
                    path=str(path),
                    hint="--dev runs the permissive development hooks instead",
                )
        base = path.parent
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name in ("db_url", "host", "prefect_api_url", "lifecycle_deployment", "public_url"):
                values[name] = str(value)
            elif name == "port":
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                    raise ConfigError("must be a port number", field="port", path=str(path))
                values[name] = value
            else:
                candidate = Path(str(value)).expanduser()
                values[name] = candidate if candidate.is_absolute() else base / candidate
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Each named file exists (the key files 0600) and the ledger config parses: refuse before serving."""
        from cyxwiz.ledger.config import LedgerConfig

        for name in _FILES:
            file = getattr(self, name)
            if not file.is_file():
                raise ConfigError(f"{REQUIRED[name]}: file not found", field=name, path=str(file))
        for name in ("key", "store_master_key_file"):
            file = getattr(self, name)
            if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    "readable by group or others",
                    field=name,
                    path=str(file),
                    rule="D2",
                    hint=f"chmod 600 {file}",
                )
        LedgerConfig.from_file(self.ledger_config)
        if not self.prefect_api_url.startswith(("http://", "https://")):
            raise ConfigError("must be an http(s) URL", field="prefect_api_url")
