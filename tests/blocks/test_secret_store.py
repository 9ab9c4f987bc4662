"""The key ring lives in a Prefect Secret block: round trip, rotation, and no secret in reprs (B4)."""

from __future__ import annotations

import datetime as dt

import pytest

from blocks.secret_store import PrefectSecretStore
from cyxwiz.errors import ConfigError
from cyxwiz.tokens.keyring import KeyRing, SecretKeyRingStore

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_key_ring_round_trips_through_a_secret_block(prefect_server: object) -> None:
    ring_store = SecretKeyRingStore(PrefectSecretStore(), "cyxwiz-token-keyring")
    ring = KeyRing.generate()
    ring_store.save(ring)
    loaded = ring_store.load()
    assert loaded.signing_key.kid == ring.signing_key.kid
    loaded.rotate(now=dt.datetime.now(dt.UTC))
    ring_store.save(loaded)
    again = ring_store.load()
    assert again.signing_key.kid != ring.signing_key.kid
    assert len(again.all_keys()) == 2


def test_missing_secret_is_none_and_bad_names_are_refused(prefect_server: object) -> None:
    store = PrefectSecretStore()
    assert store.get_secret("no-such-ring") is None
    with pytest.raises(ConfigError, match="lowercase"):
        store.get_secret("../etc/passwd")
    assert "PRIVATE" not in repr(store)
