"""SecurityEvent schema (H1), helpers per logged event (H2), redaction of secrets (D2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyxwiz.audit import events
from cyxwiz.audit.events import ActorType, EventType, Outcome, SecurityEvent
from cyxwiz.errors import ValidationError

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+abc\n-----END PRIVATE KEY-----"


def test_h1_fields_and_types_serialise() -> None:
    ev = events.auth_attempt(actor_id="u1", actor_type="user", success=False, method="jwt", ip_address="::1")
    data = json.loads(ev.model_dump_json())
    assert set(data) == {
        "event_id",
        "timestamp",
        "event_type",
        "actor_id",
        "actor_type",
        "resource",
        "action",
        "outcome",
        "ip_address",
        "details",
    }
    assert data["event_type"] == "Authentication"
    assert data["outcome"] == "failure"
    assert data["timestamp"].endswith("Z")
    assert {t.value for t in EventType} == {
        "Authentication",
        "Authorization",
        "DataAccess",
        "Configuration",
        "Payment",
    }


def test_every_h2_helper_builds_its_event() -> None:
    exp = datetime.now(UTC) + timedelta(hours=1)
    built = [
        events.auth_attempt(actor_id="u", actor_type=ActorType.USER, success=True, method="password"),
        events.token_issued(
            subject="u", token_type="session", expires_at=exp, jti="j1", scopes=["job:submit"]
        ),
        events.job_submitted(user_id="u", job_id="job-1", job_type="train", payment_lamports=5000),
        events.node_registered(node_id="node-1", peer_id="12D3KooW", hardware={"gpu": "H100"}),
        events.payment(action="escrow.release", job_id="job-1", amount_lamports=5000, tx_signature="5x"),
        events.configuration_change(actor_id="admin", setting="limits", changes={"max_mem": (1, 2)}),
        events.certificate_rejected(
            reason="pki-revoked", subject="CN=node-2", serial=42, ip_address="10.0.0.2"
        ),
        events.revocation(actor_id="admin", kind="certificate", target="42", reason="keyCompromise"),
        events.access_decision(
            actor_id="u", actor_type="user", resource="job:2", action="job.read", allowed=False
        ),
    ]
    types = [e.event_type for e in built]
    assert (
        EventType.PAYMENT in types and EventType.AUTHORIZATION in types and EventType.CONFIGURATION in types
    )
    assert built[1].details["token_type"] == "session"
    assert built[4].details["tx_signature"] == "5x"  # a transaction signature is not a secret
    assert built[6].outcome is Outcome.DENIED
    assert built[5].details == {"changes": {"max_mem": {"old": 1, "new": 2}}}


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "access_token",
        "refresh-token",
        "Password",
        "client_secret",
        "private_key",
        "api_key",
        "Authorization",
        "mnemonic",
        "seed",
        "jwt",
        "escrow_keypair",
        "signing_key",
    ],
)
def test_secret_keys_are_redacted_anywhere_in_details(key: str) -> None:
    ev = events.data_access(
        actor_id="u",
        actor_type="user",
        resource="r",
        action="a",
        details={key: "hunter2", "nested": {"list": [{key: "hunter2"}]}},
    )
    text = ev.model_dump_json()
    assert "hunter2" not in text
    assert ev.details[key] == events.REDACTED


@pytest.mark.parametrize("secret", [JWT, PEM, "Bearer abcdefghijklmnop", f"header was {JWT} here"])
def test_secret_values_are_redacted_under_innocent_keys(secret: str) -> None:
    ev = events.data_access(
        actor_id="u", actor_type="user", resource="r", action="a", details={"note": secret, "items": [secret]}
    )
    text = ev.model_dump_json()
    assert "eyJzdWIi" not in text and "MC4CAQAw" not in text and "abcdefghijklmnop" not in text


def test_secret_in_free_text_fields_is_redacted() -> None:
    ev = SecurityEvent(
        event_type=EventType.AUTHENTICATION,
        actor_id=JWT,
        actor_type=ActorType.ANONYMOUS,
        resource=f"/api?token={JWT}",
        action="authenticate",
        outcome=Outcome.FAILURE,
    )
    assert JWT not in ev.model_dump_json()


def test_config_change_of_a_secret_setting_hides_old_and_new() -> None:
    ev = events.configuration_change(
        actor_id="admin", setting="tokens", changes={"jwt_secret": ("old-s", "new-s")}
    )
    assert "old-s" not in ev.model_dump_json() and "new-s" not in ev.model_dump_json()
    assert ev.details["changes"] == {"jwt_secret": events.REDACTED}


def test_innocent_key_names_survive() -> None:
    ev = events.data_access(
        actor_id="u",
        actor_type="user",
        resource="r",
        action="a",
        details={"public_key": "pk", "object_key": "jobs/1", "token_type": "job", "kid": "k1"},
    )
    assert ev.details == {"public_key": "pk", "object_key": "jobs/1", "token_type": "job", "kid": "k1"}


def test_bad_input_raises_typed_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        events.auth_attempt(
            actor_id="u", actor_type="user", success=True, method="jwt", ip_address="not-an-ip"
        )
    assert err.value.field == "ip_address" and err.value.rule == "H1"
    with pytest.raises(ValidationError) as err:
        events.auth_attempt(actor_id="", actor_type="user", success=True, method="jwt")
    assert err.value.field == "actor_id"
    with pytest.raises(ValidationError) as err:
        events.auth_attempt(actor_id="u", actor_type="robot", success=True, method="jwt")
    assert err.value.field == "actor_type"
    with pytest.raises(ValidationError) as err:
        events.data_access(actor_id="u", actor_type="user", resource="r", action="a", details={"k": object()})  # type: ignore[dict-item]
    assert err.value.field.startswith("details")


def test_naive_timestamp_refused_and_event_is_frozen() -> None:
    with pytest.raises(ValidationError):
        events.auth_attempt(
            actor_id="u", actor_type="user", success=True, method="jwt", at=datetime(2026, 1, 1)
        )
    ev = events.auth_attempt(actor_id="u", actor_type="user", success=True, method="jwt")
    with pytest.raises(pydantic.ValidationError):
        ev.actor_id = "other"  # type: ignore[misc]


def test_deep_nesting_is_cut() -> None:
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(50):
        cur["d"] = {}
        cur = cur["d"]  # type: ignore[assignment]
    ev = events.data_access(actor_id="u", actor_type="user", resource="r", action="a", details=deep)  # type: ignore[arg-type]
    assert "too deep" in ev.model_dump_json()


@pytest.mark.parametrize(
    "text",
    [
        "BEARER abcdefghijklmnop",
        "bAsIc QWxhZGRpbjpvcGVu",
        "EYJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        "-----begin ec private key-----\nMHcCAQEE\n-----end ec private key-----",
        "Baſic QWxhZGRpbjpvcGVu",  # not ASCII: the long s matches s case-insensitively
    ],
)
def test_secret_text_in_any_case_is_redacted(text: str) -> None:
    from cyxwiz.audit.redaction import redact_text

    assert redact_text(text) == events.REDACTED
    assert redact_text("job:bench-1 escrow.release") == "job:bench-1 escrow.release"  # positive control


_PIECES = [
    "eyJ", "EYj", "abc", "Z09", ".", "-", "_", " ", "\n", "-----BEGIN ", "-----begin ", "RSA ",
    "PRIVATE KEY-----", "-----END ", "Bearer", "BASIC", "basic", "bearer", "QWxhZGRpbjpv", "job:bench-1", "ſ",
]  # fmt: skip


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join) | st.text(max_size=40))
def test_redact_text_is_exactly_the_secret_pattern(text: str) -> None:
    """The fast path (ASCII text holding no literal start of the pattern) changes nothing the pattern
    would have changed: text made of the pattern's own pieces in any case, and any text at all."""
    from cyxwiz.audit.redaction import _SECRET_VALUE, redact_text

    assert redact_text(text) == _SECRET_VALUE.sub(events.REDACTED, text)
