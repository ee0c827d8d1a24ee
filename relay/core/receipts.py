"""Delivery receipts, pure: the receipt an alert push carries, its MAC, and the check of one the
phone sends back (relay.http.receipts serves it, relay.store.receipts records it).

A receipt is `{"id": <notification id>, "mac": <MAC>}` beside `aps` (which then carries
`mutable-content: 1`, so the app's Notification Service Extension runs when the alert is shown).
The MAC is HMAC-SHA256 over a domain-separated id with the app's receipt secret, truncated to
MAC_BYTES and base64url-encoded without padding: it proves the receipt answers a push this relay
built, so no credential is put in the app. It reveals nothing but the id, which names no person.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

RECEIPT_KEY = "receipt"  # the payload's top-level key
MUTABLE_CONTENT = "mutable-content"
MAC_BYTES = 16  # 128 bits: forging one is 2^128 guesses, each a rate-limited request
MAC_CHARS = 22  # base64url of MAC_BYTES, no padding
MIN_SECRET_BYTES = 32
_DOMAIN = b"gms-apns-relay receipt v1\x00"
# What an id looks like to the receipt route (the store's own check, bucket_of(), is stricter):
# "<shard>-<32 hex>", shards below 10000.
ID_PATTERN = r"^[0-9]{2,4}-[0-9a-f]{32}$"
MAC_PATTERN = rf"^[A-Za-z0-9_-]{{{MAC_CHARS}}}$"
_ID = re.compile(ID_PATTERN.strip("^$"))
_MAC = re.compile(MAC_PATTERN.strip("^$"))


class ReceiptOutcome(StrEnum):
    """What became of a receipt the phone posted (apns_relay_receipts_total's `outcome`)."""

    RECORDED = "recorded"  # the first for its notification: received_at_ms is set
    REPLAYED = "replayed"  # one was recorded already: nothing changed (the first one wins)
    FORGED = "forged"  # well formed, but no configured secret made its MAC
    MALFORMED = "malformed"  # not {"id", "mac"} of the right form
    STALE = "stale"  # past its notification's retention: nothing left to attach it to
    RATE_LIMITED = "rate_limited"  # refused unread: its address, or every address, over the rate


def receipt_mac(secret: bytes, notification_id: str) -> str:
    """The MAC a receipt for `notification_id` carries under `secret`."""
    digest = hmac.new(secret, _DOMAIN + notification_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:MAC_BYTES]).rstrip(b"=").decode()


def receipt_object(secret: bytes, notification_id: str) -> dict[str, str]:
    """The receipt a push for `notification_id` carries."""
    return {"id": notification_id, "mac": receipt_mac(secret, notification_id)}


def receipt_size(sample_id: str = "00-" + "0" * 32) -> int:
    """The bytes a receipt adds to a payload (every id of a queue has the same length): the key,
    the object and `mutable-content: 1` with their separators."""
    receipt = f',"{RECEIPT_KEY}":{{"id":"{sample_id}","mac":"{"A" * MAC_CHARS}"}}'
    return len(receipt) + len(f',"{MUTABLE_CONTENT}":1')


@dataclass(frozen=True, slots=True)
class ReceiptSecrets:
    """One app's receipt secrets: the current one signs, both verify (the previous one until
    every push it signed has expired: queue.max_ttl_seconds after the rotation)."""

    current: bytes
    previous: bytes | None = None

    def verifies(self, notification_id: str, mac: str) -> bool:
        """Whether a secret of these made `mac` (compared in constant time, each of them)."""
        made = [self.current] + ([self.previous] if self.previous is not None else [])
        matches = [hmac.compare_digest(receipt_mac(s, notification_id), mac) for s in made]
        return any(matches)


@dataclass(frozen=True, slots=True)
class MalformedReceipt:
    """A receipt not of the form {"id", "mac"}: which field, and the rule it breaks."""

    field: str
    rule: str


def check_form(body: object) -> tuple[str, str] | MalformedReceipt:
    """(id, mac) from a decoded request body, or what is wrong with it."""
    if not isinstance(body, dict):
        return MalformedReceipt("body", 'must be a JSON object {"id", "mac"}')
    unknown = sorted(set(body) - {"id", "mac"})
    if unknown:
        return MalformedReceipt(unknown[0], 'is not a receipt field (allowed: "id", "mac")')
    notification_id, mac = body.get("id"), body.get("mac")
    if not isinstance(notification_id, str) or not _ID.fullmatch(notification_id):
        return MalformedReceipt("id", "must be a notification id: <shard>-<32 hex digits>")
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        return MalformedReceipt(
            "mac", f"must be {MAC_CHARS} base64url characters (A-Z a-z 0-9 - _)"
        )
    return notification_id, mac


def signing_app(
    secrets: Mapping[str, ReceiptSecrets], notification_id: str, mac: str
) -> str | None:
    """The app whose secrets made `mac` for `notification_id`, or None (forged). Every app is
    tried, so the time taken says nothing of which one came close."""
    found = [app for app, keys in secrets.items() if keys.verifies(notification_id, mac)]
    return found[0] if found else None


def with_receipt(
    aps: dict[str, object], payload: dict[str, object], secret: bytes, notification_id: str
) -> None:
    """Mark `aps` for the app's Notification Service Extension and put the receipt in
    `payload` (which holds `aps`), in place."""
    aps[MUTABLE_CONTENT] = 1
    payload[RECEIPT_KEY] = receipt_object(secret, notification_id)
