"""APNs request building: a validated push request -> JSON body and headers within limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import orjson

from relay.core.fields import (
    must_be_string,
    normalize_device_token,
    validate_action,
    validate_service_id,
)
from relay.core.model import (
    MAX_COLLAPSE_ID_BYTES,
    PRIORITIES,
    PUSH_TYPES,
    ExpiredOnArrival,
    InvalidInput,
    Notification,
    PayloadTooLarge,
    payload_limit,
)
from relay.core.push_types import check_priority
from relay.core.quoting import shown, shown_token
from relay.core.receipts import RECEIPT_KEY, receipt_size, with_receipt

if TYPE_CHECKING:
    from relay.core.app_profile import AppProfile

PRIORITY_RULE = "must be 1, 5 or 10"  # PRIORITIES, worded as pydantic's Literal error is
MAX_KEY_CHARS = 256  # an idempotency key becomes part of a Redis key
BACKGROUND = "background"
BACKGROUND_PRIORITY = 5
RESERVED_KEYS = frozenset({"aps", "message"})


class ChatEventKind(StrEnum):
    """What a chat push reports; TYPING is relayed only to apps that ask for it."""

    MESSAGE = "message"
    JOINED = "joined"
    LEFT = "left"
    TYPING = "typing"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class ChatLine:
    """The chat transcript event a push reports, kept so the caller can order and de-duplicate
    chat pushes per device by position."""

    kind: ChatEventKind
    session_id: str
    position: int | None  # GMS transcriptPosition; None only for an end without one


@dataclass(frozen=True, slots=True)
class AlertFields:
    """An alert as a dictionary (Apple's keys in snake case)."""

    title: str | None = None
    subtitle: str | None = None
    body: str | None = None
    loc_key: str | None = None
    loc_args: tuple[str, ...] | None = None
    title_loc_key: str | None = None
    title_loc_args: tuple[str, ...] | None = None

    def as_aps(self) -> dict[str, object]:
        fields = {
            "title": self.title,
            "subtitle": self.subtitle,
            "body": self.body,
            "loc-key": self.loc_key,
            "loc-args": list(self.loc_args) if self.loc_args is not None else None,
            "title-loc-key": self.title_loc_key,
            "title-loc-args": list(self.title_loc_args)
            if self.title_loc_args is not None
            else None,
        }
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class PushSpec:
    """One validated push request, from either ingest path (GMS customhttp or the JSON API)."""

    device_token: str  # lower-case hex
    app: str | None = None  # None: the default app
    service_id: str | None = None
    action: str | None = None
    alert: str | AlertFields | None = None  # None: the app's template for the action
    sound: str | None = None
    badge: int | None = None
    ttl_s: int | None = None  # at most one of ttl_s and expires_at; neither: the default ttl
    expires_at: int | None = None
    priority: int | None = None
    push_type: str | None = None
    collapse_id: str | None = None
    idempotency_key: str | None = None
    message_fields: dict[str, object] = field(default_factory=dict)  # beside _id/_action
    extra: dict[str, object] = field(default_factory=dict)  # top-level keys beside aps/message
    thread_id: str | None = None  # None: the service id
    chat: ChatLine | None = None  # set when the push reports a chat transcript event


def build_notification(
    spec: PushSpec,
    app: AppProfile,
    *,
    now_s: int,
    default_ttl_s: int,
    max_ttl_s: int,
    notification_id: str | None = None,
) -> Notification:
    """The APNs request for `spec` sent through `app`, or InvalidInput naming what is wrong.
    `notification_id`: the id it will be queued under (RelayQueue.id_for), which the delivery
    receipt of an app with receipts on names; without it, no receipt."""
    token = normalize_device_token(spec.device_token)
    if spec.service_id is not None:
        validate_service_id(spec.service_id)
    if spec.action is not None:
        validate_action(spec.action)
    if spec.idempotency_key is not None:
        _check_idempotency_key(spec.idempotency_key)
    push_type = _check_push_type(spec.push_type or app.push_type)
    priority = _priority(spec, app, push_type)
    chat_event = None if spec.chat is None else spec.chat.kind.value
    app_ttl_s = app.lifetime_s(spec.action, chat_event)
    expires_at = _expires_at(spec, now_s, app_ttl_s or default_ttl_s, max_ttl_s)
    receipt = None
    if app.receipt_secret is not None and notification_id is not None:
        receipt = (app.receipt_secret, notification_id)
    body, receipted = _payload(spec, app, push_type, receipt)
    # The receipt is counted in: a push carrying one fits whole, or is refused whole.
    within = f"; {receipt_size()} bytes of it the delivery receipt" if receipted else ""
    _check_payload_size(body, push_type, within)
    return Notification(
        app=app.name,
        device_token=token,
        payload=body,
        push_type=push_type,
        priority=priority,
        expires_at=expires_at,
        collapse_id=_collapse_id(spec),
        # A chat line must never replace an earlier one in the queue, so it has no supersede key.
        service_id=spec.service_id if spec.chat is None else None,
        action=spec.action,
        idempotency_key=spec.idempotency_key,
        # Chat lines go out in transcript order per session, whatever order GMS posted them in.
        order_group=None if spec.chat is None else spec.chat.session_id,
        order=None if spec.chat is None else spec.chat.position,
    )


def _priority(spec: PushSpec, app: AppProfile, push_type: str) -> int:
    if spec.priority is not None:
        priority = spec.priority
    elif push_type == BACKGROUND:
        priority = BACKGROUND_PRIORITY
    else:
        priority = app.priority
    return _check_priority(priority, push_type)


def _check_priority(priority: object, push_type: str) -> int:
    # bool is an int to Python (True == 1): never a priority.
    if not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITIES:
        raise InvalidInput("priority", PRIORITY_RULE, received=shown(priority))
    return check_priority(push_type, priority)


def _check_push_type(push_type: object) -> str:
    if not isinstance(push_type, str) or push_type not in PUSH_TYPES:
        raise InvalidInput(
            "push_type",
            f"must be one of {', '.join(sorted(PUSH_TYPES))}",
            received=shown(push_type),
        )
    return push_type


def _check_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        raise InvalidInput(
            "idempotency_key", f"must be 1 to {MAX_KEY_CHARS} characters", received=shown(key)
        )
    return key


def _check_payload_size(body: bytes, push_type: str, within: str = "") -> None:
    """APNs' size limit; `within` says what of the body the relay added (a receipt)."""
    limit = payload_limit(push_type)
    if len(body) > limit:
        raise PayloadTooLarge(
            "payload",
            f"must be at most {limit} bytes once built (APNs' limit for push type {push_type}"
            f"{within})",
            received=f"{len(body)} bytes",
        )


def _check_whole_number(value: object, field_name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(field_name, "must be a whole number", received=shown(value))
    return value


def check_notification(n: Notification) -> Notification:
    """`n` when it keeps the rules ingest built it by, else InvalidInput naming the first field
    that does not: for a notification read back from somewhere it could have been damaged or
    written by another version (the spool, Redis). The same checks as build_notification, each
    written once; the app's name is only required to be text (which apps exist is the worker's
    call: an unknown one fails UnknownApp), and expiry is not a fault here (claim expires it)."""
    if not isinstance(n.app, str) or not n.app:
        raise InvalidInput("app", "must be a non-empty string", received=shown(n.app))
    token = must_be_string(n.device_token, "device_token")
    if normalize_device_token(token) != token:
        raise InvalidInput("device_token", "must be lower-case hex", received=shown_token(token))
    if not isinstance(n.payload, bytes):
        raise InvalidInput("payload", "must be bytes", received=shown(type(n.payload).__name__))
    push_type = _check_push_type(n.push_type)
    _check_priority(n.priority, push_type)
    _check_whole_number(n.expires_at, "expires_at")
    _check_payload_size(n.payload, push_type)
    if n.collapse_id is not None:
        _check_collapse_id(must_be_string(n.collapse_id, "collapse_id"), "collapse_id")
    if n.service_id is not None:
        validate_service_id(n.service_id)
    if n.action is not None:
        validate_action(n.action)
    if n.idempotency_key is not None:
        _check_idempotency_key(n.idempotency_key)
    if n.order_group is not None:
        must_be_string(n.order_group, "order_group")
    if n.order is not None:
        _check_whole_number(n.order, "order")
    if n.request_digest is not None:
        must_be_string(n.request_digest, "request_digest")
    return n


def _expires_at(spec: PushSpec, now_s: int, default_ttl_s: int, max_ttl_s: int) -> int:
    if spec.ttl_s is not None and spec.expires_at is not None:
        raise InvalidInput("ttl", "give ttl or expires_at, not both")
    if spec.expires_at is not None:
        if spec.expires_at <= now_s:
            raise ExpiredOnArrival(
                "expires_at",
                f"must be in the future (now: {now_s}); this push expired on arrival",
                received=shown(spec.expires_at),
            )
        if spec.expires_at > now_s + max_ttl_s:
            raise InvalidInput(
                "expires_at",
                f"must be at most {max_ttl_s} s from now ({now_s + max_ttl_s})",
                received=shown(spec.expires_at),
            )
        return spec.expires_at
    ttl = default_ttl_s if spec.ttl_s is None else spec.ttl_s
    if not 0 < ttl <= max_ttl_s:
        raise InvalidInput("ttl", f"must be 1 to {max_ttl_s} seconds", received=shown(ttl))
    return now_s + ttl


def _collapse_id(spec: PushSpec) -> str | None:
    if spec.collapse_id is not None:
        collapse_id, source = spec.collapse_id, "collapse_id"
    elif spec.chat is None and spec.service_id is not None:
        # Defaulting to the service id makes a newer push for the same GMS service replace
        # the older one on the phone; chat lines are each worth seeing, so they do not collapse.
        collapse_id, source = spec.service_id, "service_id (the default collapse id)"
    else:
        return None
    return _check_collapse_id(collapse_id, source)


def _check_collapse_id(collapse_id: str, source: str) -> str:
    size = len(collapse_id.encode())
    if not 0 < size <= MAX_COLLAPSE_ID_BYTES:
        raise InvalidInput(
            "collapse_id",
            f"{source} must be 1 to {MAX_COLLAPSE_ID_BYTES} bytes",
            received=f"{size} bytes",
        )
    # It becomes an HTTP/2 header value, which the sender does not re-validate.
    if collapse_id != collapse_id.strip() or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in collapse_id
    ):
        raise InvalidInput(
            "collapse_id",
            f"{source} must not contain control characters or surrounding white space",
            received=shown(collapse_id),
        )
    return collapse_id


def _payload(
    spec: PushSpec, app: AppProfile, push_type: str, receipt: tuple[bytes, str] | None
) -> tuple[bytes, bool]:
    """The body, and whether it carries a receipt: `receipt` (secret, id) goes into an alert
    push that shows an alert, the only kind the app's Notification Service Extension sees."""
    reserved = RESERVED_KEYS | ({RECEIPT_KEY} if receipt is not None else set())
    collisions = sorted(reserved & spec.extra.keys())
    if collisions:
        named = ", ".join(sorted(reserved))
        raise InvalidInput(f"extra.{collisions[0]}", f"is reserved for the relay ({named})")
    message = _message(spec)
    aps = _aps(spec, app, push_type, message)
    payload: dict[str, object] = {"aps": aps}
    if message:
        payload["message"] = (
            orjson.dumps(message).decode() if app.message_encoding == "string" else message
        )
    payload.update((key, value) for key, value in spec.extra.items() if value is not None)
    receipted = receipt is not None and push_type == "alert" and "alert" in aps
    if receipt is not None and receipted:
        with_receipt(aps, payload, *receipt)
    try:
        return orjson.dumps(payload), receipted
    except orjson.JSONEncodeError as error:
        raise InvalidInput("message", f"cannot be encoded as JSON: {error}") from None


def _message(spec: PushSpec) -> dict[str, object]:
    """The GMS `message`: _id and _action first, then the other fields, nulls left out."""
    message: dict[str, object] = {}
    if spec.service_id is not None:
        message["_id"] = spec.service_id
    if spec.action is not None:
        message["_action"] = spec.action
    for key, value in spec.message_fields.items():
        if value is not None and key not in message:
            message[key] = value
    return message


def _aps(
    spec: PushSpec, app: AppProfile, push_type: str, message: dict[str, object]
) -> dict[str, object]:
    aps: dict[str, object] = {}
    if push_type == BACKGROUND:
        # Apple drops background pushes that carry user-visible content, so refuse them early.
        for name, value in (("alert", spec.alert), ("sound", spec.sound), ("badge", spec.badge)):
            if value is not None:
                raise InvalidInput(
                    name, "is not allowed with push type background", received=shown(value)
                )
        aps["content-available"] = 1
    else:
        alert = _alert(spec, app, push_type, message)
        if alert:
            aps["alert"] = alert
        # The app's sound belongs to its alerts; other push types sound only when asked to.
        sound = spec.sound if spec.sound is not None or push_type != "alert" else app.sound
        if sound:
            aps["sound"] = sound
        if spec.badge is not None:
            if spec.badge < 0:
                raise InvalidInput("badge", "must be at least 0", received=shown(spec.badge))
            aps["badge"] = spec.badge
    thread_id = spec.thread_id or spec.service_id
    if thread_id:
        aps["thread-id"] = thread_id
    return aps


def _alert(
    spec: PushSpec, app: AppProfile, push_type: str, message: dict[str, object]
) -> str | dict[str, object] | None:
    if isinstance(spec.alert, AlertFields):
        return spec.alert.as_aps()
    if spec.alert is not None:
        return spec.alert
    if push_type != "alert":
        return None  # only a user-facing alert push gets a template
    template = app.alert_template(spec.action).render(message)
    return AlertFields(
        title=template.title or None,
        subtitle=template.subtitle or None,
        body=template.body or None,
        loc_key=template.loc_key,
        loc_args=tuple(template.loc_args) if template.loc_args is not None else None,
    ).as_aps()
