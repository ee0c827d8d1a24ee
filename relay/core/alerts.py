"""Alert templates: an app's alert for each GMS action, `{field}` filled from the message."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, field_validator


class AlertTemplate(BaseModel):
    """An alert for one action; `{field}` in title/subtitle/body is filled from the message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str | None = None
    subtitle: str | None = None
    body: str | None = None
    loc_key: str | None = None
    loc_args: list[str] | None = None

    @field_validator("title", "subtitle", "body")
    @classmethod
    def _plain_placeholders(cls, text: str | None) -> str | None:
        if text is not None:
            template_fields(text)
        return text

    def render(self, fields: Mapping[str, object]) -> AlertTemplate:
        """The template with placeholders replaced; a field the message lacks becomes ''."""
        return self.model_copy(
            update={
                name: render_template(text, fields)
                for name, text in (
                    ("title", self.title),
                    ("subtitle", self.subtitle),
                    ("body", self.body),
                )
                if text is not None
            }
        )


def template_fields(text: str) -> list[str]:
    """The placeholder names in a template; only plain `{name}` is allowed, because str.format's
    attribute and index syntax would let a template reach into Python objects."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ValueError(f"bad template {text!r}: {error}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or spec or conversion:
            raise ValueError(
                f"bad placeholder {{{name}}} in {text!r}: only {{field}} with a message key "
                "(letters, digits, _ and -) is allowed"
            )
        names.append(name)
    return names


def render_template(text: str, fields: Mapping[str, object]) -> str:
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(text):
        parts.append(literal)
        if name is not None:
            value = fields.get(name)
            parts.append("" if value is None else str(value))
    return "".join(parts)


# Used when an app does not override an action: one English alert per action the seed names.
DEFAULT_ALERTS: Mapping[str, AlertTemplate] = {
    "get-dialog-user-confirmation-provide_code-true": AlertTemplate(
        title="An agent is available", body="Tap to confirm you are ready to talk."
    ),
    "get-dialog-user-confirmation-provide_code-false": AlertTemplate(
        title="An agent is available", body="Tap to confirm you are ready to talk."
    ),
    "get-dialog-start-chat": AlertTemplate(
        title="Your chat is ready", body="Tap to start chatting with an agent."
    ),
    "connect-inbound": AlertTemplate(
        title="An agent is ready for your call", body="Tap to call us now."
    ),
    "connect-outbound": AlertTemplate(
        title="We are calling you", body="You will receive the call shortly."
    ),
    "wait-for-agent": AlertTemplate(
        title="You are in the queue", body="We will notify you when an agent is available."
    ),
}
GENERIC_ALERT = AlertTemplate(body="You have a new notification.")
