"""A private SoftHSM2 token in a directory: for tests, ``cyxwiz demo --hsm`` and the benchmark.

SoftHSM2 finds its tokens through the config file named by ``SOFTHSM2_CONF``. :func:`init_token` writes
such a config pointing at ``<dir>/tokens`` and initialises a token there with ``softhsm2-util`` (argument
list, no shell), so nothing touches the system's token directory. The caller exports the returned
``SOFTHSM2_CONF`` (and the PIN) to every process that uses the token — before the first PKCS#11 call in
that process, because SoftHSM2 reads its config once, at C_Initialize.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cyxwiz.errors import ConfigError
from cyxwiz.pki._files import KEY_MODE, write_atomic

CONF_ENV = "SOFTHSM2_CONF"


@dataclass(frozen=True, kw_only=True)
class SoftToken:
    """An initialised SoftHSM2 token: its config, label and PIN file (0600)."""

    conf: Path
    label: str
    pin_file: Path

    def uri(self, obj: str) -> str:
        """The ``pkcs11:`` URI of key ``obj`` in this token, PIN read from the 0600 PIN file."""
        from urllib.parse import quote

        path = f"token={quote(self.label, safe='')};object={quote(obj, safe='')}"
        return f"pkcs11:{path}?pin-source=file:{self.pin_file}"

    def env(self) -> dict[str, str]:
        return {CONF_ENV: str(self.conf)}


def softhsm_util() -> str:
    found = shutil.which("softhsm2-util")
    if found is None:
        raise ConfigError(
            "softhsm2-util not found", field="softhsm2", rule="A7", hint="apt-get install softhsm2"
        )
    return found


def init_token(directory: Path, *, label: str = "cyxwiz", pin: str, so_pin: str) -> SoftToken:
    """A fresh token labelled ``label`` under ``directory`` (created 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    pin_file = directory / f"{label}.pin"
    write_atomic(pin_file, pin.encode(), mode=KEY_MODE, overwrite=True)
    env = {**os.environ, CONF_ENV: str(conf)}
    # The PINs pass as arguments: softhsm2-util has no other non-interactive way. This is a development
    # token; production tokens are initialised by their own officers' tooling.
    done = subprocess.run(
        [softhsm_util(), "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(
            f"softhsm2-util could not initialise the token: {done.stderr.strip()[:200]}",
            path=str(directory),
            rule="A7",
        )
    return SoftToken(conf=conf, label=label, pin_file=pin_file)
