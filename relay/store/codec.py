"""Notifications and outcomes to script arguments, and Redis replies back to records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_type_hints

from relay.core.model import (
    Delivered,
    DeliveryOutcome,
    Expired,
    Failed,
    InvalidInput,
    Notification,
    PauseApp,
    Retry,
    apns_id_for,
)
from relay.core.payload import check_notification
from relay.core.quoting import shown
from relay.store.records import (
    NOTIFICATION_FIELDS,
    DeadTokenRecord,
    ExpiredRecord,
    LeasedNotification,
    MalformedRecord,
)
from relay.store.scripts import ScriptArg


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def optional_int(value: bytes | str | None) -> int | None:
    return None if value is None else int(value)


def optional_text(value: bytes | str | None) -> str | None:
    return None if value is None else text(value)


def _field_decoder(annotation: Any) -> Callable[[bytes | str], Any]:
    if annotation is bytes:
        return lambda value: value if isinstance(value, bytes) else value.encode()
    if annotation is int or annotation == int | None:
        return int  # a None field is not stored, so only present values are decoded
    return text


_NOTIFICATION_DECODERS = {
    name: _field_decoder(hint)
    for name, hint in get_type_hints(Notification).items()
    if name in NOTIFICATION_FIELDS
}


class MalformedRecordError(ValueError):
    """A record read from Redis that breaks ingest's rules (invariant 14); says which field."""


def _decoded(name: str, value: bytes | str) -> Any:
    try:
        return _NOTIFICATION_DECODERS[name](value)
    except ValueError:  # int() of text, or bytes that are not UTF-8
        rule = "must be a whole number" if _NOTIFICATION_DECODERS[name] is int else "must be text"
        raise InvalidInput(name, rule, received=shown(value)) from None


def notification_from(payload: bytes, values: Sequence[bytes | str | None]) -> Notification:
    """The Notification a record's fields hold, as stored: not checked (see leased_from)."""
    decoded: dict[str, Any] = {
        name: None if value is None else _decoded(name, value)
        for name, value in zip(NOTIFICATION_FIELDS, values, strict=True)
    }
    return Notification(payload=payload, **decoded)


def order_args(n: Notification) -> tuple[str, ScriptArg]:
    """(group, order) for enqueue.lua; ('', '') when the notification is plain FIFO."""
    if n.order_group is None or n.order is None:
        return "", ""
    return n.order_group, n.order


def outcome_args(notification_id: str, outcome: DeliveryOutcome) -> tuple[ScriptArg, ...]:
    """(kind, status, reason, apns_id, delay_ms, invalid_since_ms, apns_unique_id) for
    settle.lua; '' = none. The apns-id the relay derived itself is left out (the history derives
    it again)."""
    match outcome:
        case Delivered(apns_id=apns_id, apns_unique_id=unique_id):
            if apns_id == apns_id_for(notification_id):
                apns_id = None
            return "delivered", 200, "", apns_id or "", "", "", unique_id or ""
        case Retry(reason=reason, delay_ms=delay_ms, status=status):
            return "retry", status or "", reason, "", max(0, delay_ms), "", ""
        case Failed(reason=reason, status=status, dead_token=dead, token_invalid_since_ms=since):
            kind = "dead" if dead else "failed"
            return kind, status, reason, "", "", "" if since is None else since, ""
        case Expired():
            return "expired", "", "", "", "", "", ""
        case PauseApp():
            raise ValueError(
                "settle: PauseApp is not a final outcome; release the claim with"
                " delay_ms = the probe interval instead"
            )


def leased_from(entry: list[Any]) -> LeasedNotification:
    """A claimed head as the worker gets it, checked by ingest's rules
    (relay.core.payload.check_notification) and against the device whose queue it heads (the
    record's token bytes are the device's hex digits); MalformedRecordError naming the field when
    it breaks them (another version wrote it, a bug, a hand edit). claim.lua has checked what it
    computes with (the header's numbers, the app), so those parse."""
    notification_id, claim_no, payload, token_bytes, *values = entry
    attempts, accepted_at_ms, updated_at_ms = values[len(NOTIFICATION_FIELDS) :]
    try:
        notification = notification_from(payload, values[: len(NOTIFICATION_FIELDS)])
        check_notification(notification)
        if bytes.fromhex(notification.device_token) != token_bytes:
            raise InvalidInput("device_token", "must be the device's whose queue the record heads")
    except InvalidInput as error:
        raise MalformedRecordError(str(error)) from None
    return LeasedNotification(
        id=text(notification_id),
        notification=notification,
        attempts=int(attempts),
        accepted_at_ms=int(accepted_at_ms),
        waiting_since_ms=int(updated_at_ms),
        claim_no=int(claim_no),
    )


def device_of(entry: list[Any]) -> str:
    """The "<app>:<token>" of a claimed head: the device whose queue it heads (claim.lua hands
    out the device's own app and token)."""
    values = entry[4:]
    app = values[NOTIFICATION_FIELDS.index("app")]
    token = values[NOTIFICATION_FIELDS.index("device_token")]
    return f"{text(app)}:{text(token)}"


def malformed_from(entry: list[Any], problem: str) -> MalformedRecord:
    notification_id, device = entry
    return MalformedRecord(text(notification_id), text(device), problem)


def expired_from(entry: list[Any]) -> ExpiredRecord:
    notification_id, app, service_id, action = entry
    return ExpiredRecord(
        text(notification_id), text(app), optional_text(service_id), optional_text(action)
    )


def dead_token_from(mark: Mapping[bytes | str, bytes | str]) -> DeadTokenRecord | None:
    """A device's dead mark (HGETALL), None when it has none."""
    values = {text(name): value for name, value in mark.items()}
    if not values:
        return None
    return DeadTokenRecord(
        reason=text(values["reason"]),
        status=optional_int(values.get("status")),
        invalid_since_ms=optional_int(values.get("invalid_since_ms")),
        marked_at_ms=int(values["marked_at_ms"]),
    )
