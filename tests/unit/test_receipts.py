"""Delivery receipts, pure: the MAC and its rotation, a receipt's form, its place in the payload
(and the 4 KB budget), the receipt route's rates, and the configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from app_profiles import app_profile
from hypothesis import given
from hypothesis import strategies as st

from relay.config.loading import load_settings
from relay.config.schema import ConfigError, ReceiptSettings, Settings
from relay.core.model import MAX_PAYLOAD_BYTES, Notification, PayloadTooLarge
from relay.core.payload import AlertFields, PushSpec, build_notification
from relay.core.receipts import (
    MAC_CHARS,
    MalformedReceipt,
    ReceiptOutcome,
    ReceiptSecrets,
    check_form,
    receipt_mac,
    receipt_size,
    signing_app,
)
from relay.http.receipts import MAX_TRACKED_ADDRESSES, ReceiptRates
from relay.store.history import time_ordered_hex
from relay_devkit.device_sim.extension import receipt_to_post

SECRET = b"s" * 32
OLD_SECRET = b"o" * 32
TOKEN = "ab" * 32
NOW = 1_900_000_000
NOTIFICATION_ID = "07-" + time_ordered_hex()


def build(
    spec: PushSpec, secret: bytes | None, notification_id: str | None = NOTIFICATION_ID
) -> Notification:
    app = app_profile(receipt_secret=secret)
    return build_notification(
        spec,
        app,
        now_s=NOW,
        default_ttl_s=3600,
        max_ttl_s=86_400,
        notification_id=notification_id,
    )


def callback(**changes: object) -> PushSpec:
    spec = PushSpec(device_token=TOKEN, service_id="SVC1", action="get-dialog-start-chat")
    return replace(spec, **changes)  # type: ignore[arg-type]


# ---- the MAC ----


def test_mac_is_truncated_hmac_sha256_over_the_domain_separated_id() -> None:
    digest = hmac.new(
        SECRET, b"gms-apns-relay receipt v1\x00" + NOTIFICATION_ID.encode(), hashlib.sha256
    ).digest()
    expected = base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert receipt_mac(SECRET, NOTIFICATION_ID) == expected
    assert len(expected) == MAC_CHARS


@given(st.binary(min_size=32, max_size=64), st.binary(min_size=32, max_size=64))
def test_a_mac_verifies_under_its_own_secret_only(secret: bytes, other: bytes) -> None:
    mac = receipt_mac(secret, NOTIFICATION_ID)
    assert ReceiptSecrets(secret).verifies(NOTIFICATION_ID, mac)
    assert ReceiptSecrets(other).verifies(NOTIFICATION_ID, mac) == (secret == other)
    assert not ReceiptSecrets(secret).verifies("07-" + time_ordered_hex(), mac)


def test_rotation_accepts_the_previous_secret_and_signs_with_the_new() -> None:
    rotated = ReceiptSecrets(SECRET, previous=OLD_SECRET)
    assert rotated.verifies(NOTIFICATION_ID, receipt_mac(OLD_SECRET, NOTIFICATION_ID))
    assert rotated.verifies(NOTIFICATION_ID, receipt_mac(SECRET, NOTIFICATION_ID))
    # Once the previous secret is dropped, its receipts are forged.
    assert not ReceiptSecrets(SECRET).verifies(
        NOTIFICATION_ID, receipt_mac(OLD_SECRET, NOTIFICATION_ID)
    )
    body = orjson.loads(build(callback(), rotated.current).payload)
    assert body["receipt"]["mac"] == receipt_mac(SECRET, NOTIFICATION_ID)


def test_the_signing_app_is_the_one_whose_secret_made_the_mac() -> None:
    secrets = {"a": ReceiptSecrets(SECRET), "b": ReceiptSecrets(OLD_SECRET)}
    assert signing_app(secrets, NOTIFICATION_ID, receipt_mac(OLD_SECRET, NOTIFICATION_ID)) == "b"
    assert signing_app(secrets, NOTIFICATION_ID, "A" * MAC_CHARS) is None


# ---- a receipt's form ----


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"id": NOTIFICATION_ID}, "mac"),
        ({"mac": "A" * MAC_CHARS}, "id"),
        ({"id": "not-an-id", "mac": "A" * MAC_CHARS}, "id"),
        ({"id": NOTIFICATION_ID.upper(), "mac": "A" * MAC_CHARS}, "id"),
        ({"id": NOTIFICATION_ID, "mac": "A" * (MAC_CHARS + 1)}, "mac"),
        ({"id": NOTIFICATION_ID, "mac": "+" * MAC_CHARS}, "mac"),
        ({"id": NOTIFICATION_ID, "mac": 7}, "mac"),
        ({"id": NOTIFICATION_ID, "mac": "A" * MAC_CHARS, "at": 1}, "at"),
    ],
)
def test_a_malformed_receipt_names_its_field_and_rule(body: object, field: str) -> None:
    problem = check_form(body)
    assert isinstance(problem, MalformedReceipt)
    assert problem.field == field
    assert problem.rule


def test_a_well_formed_receipt_is_its_id_and_mac() -> None:
    mac = receipt_mac(SECRET, NOTIFICATION_ID)
    assert check_form({"id": NOTIFICATION_ID, "mac": mac}) == (NOTIFICATION_ID, mac)


# ---- the payload ----


def test_without_receipts_the_payload_is_byte_for_byte_as_before() -> None:
    spec = callback(extra={"receipt": "the client's own"})
    assert build(spec, None).payload == build(spec, None, notification_id=None).payload
    assert build(spec, None).payload == (
        b'{"aps":{"alert":{"title":"Your chat is ready","body":"Tap to start chatting with an'
        b' agent."},'
        b'"sound":"default","thread-id":"SVC1"},'
        b'"message":{"_id":"SVC1","_action":"get-dialog-start-chat"},'
        b'"receipt":"the client\'s own"}'
    )


def test_an_alert_push_carries_mutable_content_and_the_receipt() -> None:
    plain = build(callback(), None).payload
    receipted = build(callback(), SECRET).payload
    body = orjson.loads(receipted)
    assert body["aps"]["mutable-content"] == 1
    assert body["receipt"] == {
        "id": NOTIFICATION_ID,
        "mac": receipt_mac(SECRET, NOTIFICATION_ID),
    }
    assert len(receipted) - len(plain) == receipt_size()
    # Everything else is as without receipts.
    del body["aps"]["mutable-content"], body["receipt"]
    assert body == orjson.loads(plain)


@pytest.mark.parametrize(
    "spec",
    [
        callback(push_type="background", alert=None),
        callback(push_type="voip"),
        callback(push_type="alert", alert=AlertFields()),  # shows nothing: no extension runs
    ],
)
def test_only_an_alert_push_that_shows_an_alert_carries_a_receipt(spec: PushSpec) -> None:
    assert build(spec, SECRET).payload == build(spec, None).payload


def test_a_receipt_app_reserves_the_receipt_key() -> None:
    with pytest.raises(Exception, match="reserved") as caught:
        build(callback(extra={"receipt": 1}), SECRET)
    assert getattr(caught.value, "field", None) == "extra.receipt"


def test_the_receipt_is_counted_in_the_4kb_budget() -> None:
    plain_size = len(build(callback(alert="x"), None).payload)
    # An alert text that fits exactly without a receipt ...
    fits = callback(alert="x" * (MAX_PAYLOAD_BYTES - plain_size + 1))
    assert len(build(fits, None).payload) == MAX_PAYLOAD_BYTES
    # ... is refused whole with one, and the refusal says what the receipt took.
    with pytest.raises(PayloadTooLarge) as caught:
        build(fits, SECRET)
    assert f"{receipt_size()} bytes of it the delivery receipt" in caught.value.rule
    shorter = callback(alert="x" * (MAX_PAYLOAD_BYTES - plain_size + 1 - receipt_size()))
    assert len(build(shorter, SECRET).payload) == MAX_PAYLOAD_BYTES


# ---- the route's rates ----


def test_rates_hold_per_address_and_in_total() -> None:
    rates = ReceiptRates(per_address=1.0, total=15.0, burst_per_address=3.0)
    taken = [rates.wait_s("10.0.0.1", 100.0) == 0 for _ in range(5)]
    assert taken == [True, True, True, False, False]
    # Other addresses share the total: 15 at once, whichever address.
    others = [rates.wait_s(f"10.0.1.{i}", 100.0) == 0 for i in range(20)]
    assert sum(others) == 15 - 3
    assert rates.wait_s("10.0.0.1", 100.5) > 0
    assert rates.wait_s("10.0.0.1", 101.0) == 0  # one a second refills


def test_rates_track_a_bounded_number_of_addresses() -> None:
    rates = ReceiptRates(per_address=1.0, total=1e9)
    for i in range(MAX_TRACKED_ADDRESSES + 50):
        rates.wait_s(f"addr-{i}", 0.0)
    assert len(rates._addresses) == MAX_TRACKED_ADDRESSES


# ---- configuration ----


def test_a_secret_comes_inline_from_a_variable_or_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "receipts.key"
    secret_file.write_bytes(b"f" * 40 + b"\n")
    config = tmp_path / "relay.yaml"
    config.write_text(
        "apps:\n"
        "  - name: demo\n    topic: com.example.demo\n    environment: sandbox\n"
        "    auth: {token: {key_file: key.p8, key_id: ABCDEFGHIJ, team_id: ABCDEFGHIJ}}\n"
        "    receipts: {secret_file: receipts.key, previous_secret_env: OLD_RECEIPTS}\n"
    )
    (tmp_path / "key.p8").write_text("not read at load")
    settings = load_settings(config, env={"OLD_RECEIPTS": "p" * 32})
    assert settings.receipt_secrets() == {"demo": ReceiptSecrets(b"f" * 40, b"p" * 32)}
    assert settings.apps[0].profile().receipt_secret == b"f" * 40


@pytest.mark.parametrize(
    ("receipts", "problem"),
    [
        ({}, "give secret, secret_env or secret_file"),
        ({"secret": "short"}, "at least 32 bytes"),
        ({"secret": "s" * 32, "secret_env": "X"}, "not more"),
        ({"secret_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE is not set"),
    ],
)
def test_a_bad_receipt_secret_is_refused_at_start(
    receipts: dict[str, str], problem: str, tmp_path: Path
) -> None:
    config = tmp_path / "relay.yaml"
    (tmp_path / "key.p8").write_text("x")
    document = {
        "apps": [
            {
                "name": "demo",
                "topic": "com.example.demo",
                "environment": "sandbox",
                "auth": {"token": {"key_file": "key.p8", "key_id": "A" * 10, "team_id": "A" * 10}},
                "receipts": receipts,
            }
        ]
    }
    config.write_text(orjson.dumps(document).decode())
    with pytest.raises(ConfigError, match=problem):
        load_settings(config, env={})
    assert Settings().receipt_secrets() == {}


# ---- the phone's extension (relay_devkit) ----


@pytest.mark.parametrize(
    ("payload", "posts"),
    [
        ({"aps": {"alert": "a", "mutable-content": 1}, "receipt": {"id": "i", "mac": "m"}}, True),
        ({"aps": {"alert": "a"}, "receipt": {"id": "i", "mac": "m"}}, False),  # not mutable
        ({"aps": {"content-available": 1, "mutable-content": 1}, "receipt": {}}, False),  # silent
        ({"aps": {"alert": "a", "mutable-content": 1}}, False),  # no receipt
        ({"aps": {"alert": "a", "mutable-content": 1}, "receipt": {"id": 1, "mac": "m"}}, False),
    ],
)
def test_the_extension_posts_only_a_shown_alert_s_receipt(
    payload: dict[str, object], posts: bool
) -> None:
    assert (receipt_to_post(payload) is not None) == posts


# ---- the documentation ----


def test_the_receipts_page_is_linked_and_names_every_setting_and_metric() -> None:
    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "receipts.md").read_text()
    assert "(docs/receipts.md)" in (root / "README.md").read_text()
    names = [*ReceiptSettings.model_fields, "receipts_port", "receipts_per_second_per_address"]
    names += ["apns_relay_receipts_total", "apns_relay_receipt_latency_seconds"]
    names += [outcome.value for outcome in ReceiptOutcome]
    assert [name for name in names if name not in page] == []
    assert f"It costs {receipt_size()} bytes" in page
