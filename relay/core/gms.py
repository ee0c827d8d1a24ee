"""GMS inputs (customhttp body: callback event, plain text, or chat event) -> PushSpec."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import orjson

from relay.core.app_profile import DEFAULT_CHAT_ACTION, AppProfile
from relay.core.fields import (
    normalize_device_token,
    validate_action,
    validate_app_name,
    validate_service_id,
)
from relay.core.model import InvalidInput, Notification
from relay.core.payload import AlertFields, ChatEventKind, ChatLine, PushSpec, build_notification
from relay.core.quoting import shown

# The action a chat push carries until to_notification() sets the app's own (chat.action):
# parsing does not know the app's settings.
CHAT_ACTION = DEFAULT_CHAT_ACTION
CHAT_TAG_PREFIX = "service.chat.refresh."
CHAT_DISCONNECTED = "DISCONNECTED"
CLIENT_PARTY = "CLIENT"
CHAT_ENDED_TEXT = "Chat ended"
MAX_CHAT_SESSION_ID_CHARS = 128
# Keys of a callback message that become the alert instead of staying in `message`.
ALERT_KEYS = ("alert", "title", "body")
ALERT_OBJECT_KEYS = (
    "title",
    "subtitle",
    "body",
    "loc-key",
    "loc-args",
    "title-loc-key",
    "title-loc-args",
)
_LINE_KINDS = {
    "Message.Text": ChatEventKind.MESSAGE,
    "Notice.Joined": ChatEventKind.JOINED,
    "Notice.Left": ChatEventKind.LEFT,
    "Notice.TypingStarted": ChatEventKind.TYPING,
    "Notice.TypingStopped": ChatEventKind.TYPING,
}


def parse_customhttp(body: bytes) -> PushSpec | None:
    """A GMS customhttp POST body `{"deviceId": ..., "message": ...}` as a push request;
    None when the event must not reach the phone (the customer's own chat line, or a chat event
    with nothing to show)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput("body", f"is not valid JSON: {error}") from None
    return customhttp_spec(document)


def customhttp_spec(document: object) -> PushSpec | None:
    """parse_customhttp on a body already decoded (the webhook decodes it once)."""
    if not isinstance(document, dict):
        raise InvalidInput(
            "body",
            'must be a JSON object {"deviceId": ..., "message": ...}',
            received=shown(document),
        )
    app, token = parse_device_id(document.get("deviceId"))
    if "message" not in document:
        raise InvalidInput("message", "is required")
    message = document["message"]
    if isinstance(message, str):
        decoded = _json_object_in_text(message)
        if decoded is None:
            return PushSpec(device_token=token, app=app, alert=message)
        message = decoded
    if not isinstance(message, dict):
        raise InvalidInput(
            "message", "must be an object, a JSON string of one, or text", received=shown(message)
        )
    envelope = _chat_envelope(message)
    if envelope is not None:
        return _chat_spec(*envelope, app=app, token=token)
    return _callback_spec(message, app=app, token=token)


def to_notification(
    spec: PushSpec,
    app: AppProfile,
    *,
    now_s: int,
    default_ttl_s: int,
    max_ttl_s: int,
    notification_id: str | None = None,
) -> Notification | None:
    """The notification to queue for `spec`, or None when the app does not want this kind of
    push (typing notices, unless the app's chat.typing is "background")."""
    typing = spec.chat is not None and spec.chat.kind is ChatEventKind.TYPING
    if typing and app.chat_typing == "none":
        return None
    if spec.chat is not None:
        # The seed's message is {"_id", "_action"}: chat fields only when the app asks for them.
        wanted = app.chat_message_fields
        fields = {key: value for key, value in spec.message_fields.items() if key in wanted}
        spec = replace(spec, action=app.chat_action, message_fields=fields)
    return build_notification(
        spec,
        app,
        now_s=now_s,
        default_ttl_s=default_ttl_s,
        max_ttl_s=max_ttl_s,
        notification_id=notification_id,
    )


def parse_device_id(raw: object) -> tuple[str | None, str]:
    """`deviceId` as (app or None, token): the hex token, optionally prefixed `<app>:`."""
    if raw is None:
        raise InvalidInput("deviceId", "is required")
    if not isinstance(raw, str):
        raise InvalidInput("deviceId", "must be a string", received=shown(raw))
    app, colon, token = raw.rpartition(":")
    if colon:
        try:
            validate_app_name(app, "deviceId")
        except InvalidInput as error:
            raise InvalidInput(
                "deviceId", f"its app prefix {error.rule}", received=error.received
            ) from None
    return (app or None), normalize_device_token(token, "deviceId")


def _json_object_in_text(text: str) -> dict[str, object] | None:
    """The object a JSON-encoded `message` holds; None for plain text."""
    stripped = text.strip()
    if not stripped:
        raise InvalidInput("message", "must not be empty", received=shown(text))
    if not stripped.startswith("{"):
        return None
    try:
        decoded: dict[str, object] = orjson.loads(stripped)  # JSON opening with { is an object
    except orjson.JSONDecodeError as error:
        raise InvalidInput("message", f"looks like JSON but is not valid: {error}") from None
    return decoded


def _callback_spec(message: dict[str, object], *, app: str | None, token: str) -> PushSpec:
    fields = dict(message)
    raw_id, raw_action = fields.pop("_id", None), fields.pop("_action", None)
    alert_parts = {key: fields.pop(key) for key in ALERT_KEYS if key in fields}
    alert = _explicit_alert(alert_parts)
    if raw_id is None and raw_action is None and alert is None:
        raise InvalidInput(
            "message",
            "must have _id, _action or alert text (alert, title, body): there is nothing to push",
            received=shown(message),
        )
    return PushSpec(
        device_token=token,
        app=app,
        service_id=None if raw_id is None else validate_service_id(raw_id, "message._id"),
        action=None if raw_action is None else validate_action(raw_action, "message._action"),
        alert=alert,
        message_fields=fields,
    )


def _explicit_alert(parts: dict[str, object]) -> str | AlertFields | None:
    """`alert` (text or Apple's alert object) or `title`/`body` from a callback message."""
    alert = parts.get("alert")
    if isinstance(alert, dict):
        if "title" in parts or "body" in parts:
            raise InvalidInput("message.alert", "give an alert object or title/body, not both")
        return _alert_object(alert)
    strings: dict[str, str] = {}
    for key, value in parts.items():
        if not isinstance(value, str):
            allowed = "a string or an object" if key == "alert" else "a string"
            raise InvalidInput(f"message.{key}", f"must be {allowed}", received=shown(value))
        strings[key] = value
    if "alert" in strings and "body" in strings:
        raise InvalidInput("message.alert", "give alert or body, not both")
    text = strings.get("alert", strings.get("body"))
    title = strings.get("title")
    return text if title is None else AlertFields(title=title, body=text)


def _alert_object(alert: dict[str, object]) -> AlertFields:
    unknown = sorted(alert.keys() - ALERT_OBJECT_KEYS)
    if unknown:
        # Worded as the JSON API's refusal of an unknown field (relay.http.refusals).
        raise InvalidInput(
            f"message.alert.{unknown[0]}",
            f"is not a field here (allowed: {', '.join(sorted(ALERT_OBJECT_KEYS))})",
        )

    def text(key: str) -> str | None:
        value = alert.get(key)
        if value is None or isinstance(value, str):
            return value
        raise InvalidInput(f"message.alert.{key}", "must be a string", received=shown(value))

    def arguments(key: str) -> tuple[str, ...] | None:
        value = alert.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise InvalidInput(f"message.alert.{key}", "must be a list", received=shown(value))
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidInput(
                    f"message.alert.{key}[{index}]", "must be a string", received=shown(item)
                )
        return tuple(value)

    return AlertFields(
        title=text("title"),
        subtitle=text("subtitle"),
        body=text("body"),
        loc_key=text("loc-key"),
        loc_args=arguments("loc-args"),
        title_loc_key=text("title-loc-key"),
        title_loc_args=arguments("title-loc-args"),
    )


def _chat_envelope(message: dict[str, object]) -> tuple[dict[str, object], str] | None:
    """The Comet `data` object of a chat event and its field path, or None for a callback.
    The event may come whole (`{"data": ..., "channel": "/_genesys"}`) or as its `data`."""
    data = message.get("data")
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        return data, "message.data"
    if "tag" in message and isinstance(message.get("message"), dict):
        return message, "message"
    if "chatSessionId" in message or "transcriptToShow" in message:
        raise InvalidInput(
            "message.tag",
            f"is required for a chat event ({CHAT_TAG_PREFIX}<service id>): "
            "send the Comet event or its data object",
        )
    return None


def _chat_spec(
    data: dict[str, object], path: str, *, app: str | None, token: str
) -> PushSpec | None:
    tag = data.get("tag")
    if not isinstance(tag, str) or not tag.startswith(CHAT_TAG_PREFIX):
        raise InvalidInput(
            f"{path}.tag", f"must be {CHAT_TAG_PREFIX}<service id>", received=shown(tag)
        )
    chat_service_id = validate_service_id(tag.removeprefix(CHAT_TAG_PREFIX), f"{path}.tag")
    chat = data["message"]
    assert isinstance(chat, dict)  # _chat_envelope chose `data` for holding this object
    path = f"{path}.message"
    session_id = chat.get("chatSessionId")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_CHAT_SESSION_ID_CHARS:
        raise InvalidInput(
            f"{path}.chatSessionId",
            f"must be a non-empty string of at most {MAX_CHAT_SESSION_ID_CHARS} characters",
            received="nothing" if session_id is None else shown(session_id),
        )
    raw_position = chat.get("transcriptPosition")
    position_field = f"{path}.transcriptPosition"
    alert: str | AlertFields | None
    if chat.get("chatIxnState") == CHAT_DISCONNECTED:
        # The end is pushed once per session whatever its position, which it may not carry.
        position = None if raw_position is None else _position(raw_position, position_field)
        kind, alert, line = ChatEventKind.ENDED, CHAT_ENDED_TEXT, None
        idempotency_key = f"chat:{session_id}:ended"
    else:
        position = _position(raw_position, position_field)
        line = _line_to_push(chat.get("transcriptToShow", []), f"{path}.transcriptToShow")
        if line is None:
            return None
        kind, alert = line.kind, _line_alert(line)
        idempotency_key = f"chat:{session_id}:{position}"
    # Every field an app may ask for (chat.message_fields); to_notification() keeps its choice.
    fields: dict[str, object] = {
        "chatSessionId": session_id,
        "transcriptPosition": None if position is None else str(position),  # the seed's type
        "chatEvent": kind.value,
        "lineType": None if line is None else line.line_type,
        "nick": None if line is None else line.nick or None,
    }
    return PushSpec(
        device_token=token,
        app=app,
        service_id=chat_service_id,
        action=CHAT_ACTION,
        alert=alert,
        push_type="background" if kind is ChatEventKind.TYPING else None,
        idempotency_key=idempotency_key,
        message_fields=fields,
        thread_id=session_id,
        chat=ChatLine(kind=kind, session_id=session_id, position=position),
    )


def _position(raw: object, field_name: str) -> int:
    # The seed sends positions as decimal strings ("2"); accept integers too.
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    raise InvalidInput(
        field_name,
        "must be a non-negative integer (or its decimal string)",
        received="nothing" if raw is None else shown(raw),
    )


class _TranscriptLine(NamedTuple):
    kind: ChatEventKind
    line_type: str  # GMS's own, e.g. Notice.TypingStarted: tells started from stopped
    nick: str
    text: str


def _line_to_push(lines: object, field_name: str) -> _TranscriptLine | None:
    """The transcript line worth a push: the last message, join or leave from someone other
    than the customer; a typing notice only when nothing else is there. The app shows the
    whole transcript once opened, so one alert per event is enough."""
    if not isinstance(lines, list):
        raise InvalidInput(
            field_name,
            "must be a list of [type, nick, text, position, party]",
            received=shown(lines),
        )
    chosen: _TranscriptLine | None = None
    for index, line in enumerate(lines):
        if (
            not isinstance(line, list)
            or len(line) < 5
            or not all(isinstance(item, str) for item in line[:3])
            or not isinstance(line[4], str)
        ):
            raise InvalidInput(
                f"{field_name}[{index}]",
                "must be [type, nick, text, position, party] (strings)",
                received=shown(line),
            )
        kind = _LINE_KINDS.get(line[0])
        # Unknown line types (GMS may add notices) are skipped rather than refused.
        if kind is None or line[4].upper() == CLIENT_PARTY:
            continue
        if kind is not ChatEventKind.TYPING or chosen is None or chosen.kind is kind:
            chosen = _TranscriptLine(kind, line[0], line[1], line[2])
    return chosen


def _line_alert(line: _TranscriptLine) -> AlertFields | None:
    who = line.nick or "A participant"
    match line.kind:
        case ChatEventKind.MESSAGE:
            return AlertFields(title=line.nick or None, body=line.text or None)
        case ChatEventKind.JOINED:
            return AlertFields(body=f"{who} has joined the session")
        case ChatEventKind.LEFT:
            return AlertFields(body=f"{who} has left the session")
        case _:
            return None  # typing: a background push carries no alert
