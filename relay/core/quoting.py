"""What a client sent, quoted as a refusal may quote it: bounded, secrets and tokens masked."""

from __future__ import annotations

import json
import re
import string

from relay.core.redaction import mask_token, redact_text

# A received string is quoted up to this many characters, then cut with its length said.
MAX_SHOWN_CHARS = 32
# Numbers longer than this are described, not quoted (a hostile 10,000-digit integer).
MAX_SHOWN_DIGITS = 24
# A hex run long enough to be a device token, wherever it stands (the logs' own rule leaves one
# glued to a word alone); one already masked ("a1b2c3d4…(64)") is left as it is.
_HEX_RUN = re.compile(r"(?<![0-9a-f])[0-9a-f]{8,}(?![0-9a-f…])", re.I)


def counted(number: int, noun: str) -> str:
    """`1 key`, `2 keys`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def shown(value: object) -> str:
    """`value` as a refusal may quote it: bounded, with credentials, keys and device tokens
    masked as the logs mask them (relay.core.redaction.redact_text), objects and lists only
    described."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > MAX_SHOWN_DIGITS * 3:  # ~ its digits without writing them out
            return "an integer too long to show"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # Masked before it is cut, so a cut can never leave part of a token unmasked.
        masked = _HEX_RUN.sub(lambda m: mask_token(m.group(0)), redact_text(value))
        if len(masked) <= MAX_SHOWN_CHARS:
            return json.dumps(masked, ensure_ascii=False)
        cut = json.dumps(masked[:MAX_SHOWN_CHARS] + "…", ensure_ascii=False)
        return f"{cut} ({counted(len(value), 'character')})"
    if isinstance(value, dict):
        return f"an object of {counted(len(value), 'key')}"
    if isinstance(value, list | tuple):
        return f"a list of {counted(len(value), 'item')}"
    return f"a {type(value).__name__}"


def shown_token(raw: str) -> str:
    """A refused device token described without quoting it: how long, and its first character
    that is not a hex digit."""
    bad = next((i for i, char in enumerate(raw) if char not in string.hexdigits), None)
    if bad is None:
        return counted(len(raw), "hex digit")
    return f"{counted(len(raw), 'character')}, {shown(raw[bad])} at {bad + 1} not a hex digit"
