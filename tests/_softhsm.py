"""A private SoftHSM2 token for the tests (never the system's token directory).

One token per test session (initialising one costs ~50 ms, keys are cheap); each test that uses it points
``SOFTHSM2_CONF`` at it for its own duration and names its keys uniquely, so tests never share a key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cyxwiz.keys.softhsm import CONF_ENV, SoftToken, init_token


@dataclass(frozen=True)
class HsmToken:
    token: SoftToken
    pin: str

    def new_uri(self, prefix: str = "key") -> str:
        """A URI for a key label no other test uses."""
        return self.token.uri(f"{prefix}-{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def softhsm_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmToken]:
    pin = secrets.token_hex(8)
    token = init_token(
        tmp_path_factory.mktemp("softhsm"), label="cyxwiz-test", pin=pin, so_pin=secrets.token_hex(8)
    )
    yield HsmToken(token=token, pin=pin)


@pytest.fixture
def softhsm(softhsm_session: HsmToken, monkeypatch: pytest.MonkeyPatch) -> Iterator[HsmToken]:
    monkeypatch.setenv(CONF_ENV, str(softhsm_session.token.conf))
    yield softhsm_session
    from cyxwiz.keys.pkcs11 import close_sessions

    close_sessions()
    os.environ.pop("CYXWIZ_PKCS11_PIN", None)
