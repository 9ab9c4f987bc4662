"""Prefect Secret blocks as the token key ring's secret store (SPEC B4: signing keys in a secrets store).

``SecretKeyRingStore(PrefectSecretStore(), name)`` keeps the whole key ring (private keys included) in one
Prefect ``Secret`` block, so the coordinator and the ``signing-key-rotation`` flow share it without key
files on disk. Block names are derived from the ring name; values never reach logs or reprs.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prefect.blocks.system import Secret

from cyxwiz.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class PrefectSecretStore:
    """:class:`cyxwiz.tokens.keyring.SecretStore` over Prefect ``Secret`` blocks."""

    def __repr__(self) -> str:
        return "PrefectSecretStore()"

    @staticmethod
    def _check(name: str) -> str:
        if not _NAME.match(name):
            raise ConfigError("secret names are lowercase letters, digits and '-'", field="name", rule="B4")
        return name

    def get_secret(self, name: str) -> str | None:
        from prefect.exceptions import ObjectNotFound

        try:
            block: Secret[Any] = Secret.load(self._check(name))  # type: ignore[assignment]  # sync call
        except (ObjectNotFound, ValueError):
            return None
        value = block.get()
        if isinstance(value, str):
            return value
        # Secret.get() decodes JSON text into objects; the key ring wants its JSON text back.
        return json.dumps(value) if isinstance(value, dict | list) else None

    def set_secret(self, name: str, value: str) -> None:
        Secret(value=value).save(self._check(name), overwrite=True)
