"""may_hold_secret's memo of values that hold nothing: the same answer as the check itself, and
never a secret let through."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import redaction
from relay.core.redaction import mask_secrets, may_hold_secret

PIECES = ["apns_attempt", "info", "app", "Bearer ", "ab" * 16, "eyJhbGciOi.eyJpc3Mi.sig", ":", "@"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=12), max_size=4).map("".join))
def test_a_remembered_value_gets_the_checks_own_answer_twice(text: str) -> None:
    expected = redaction._may_hold_secret(text)
    assert may_hold_secret(text) is expected
    assert may_hold_secret(text) is expected  # the second time from the memo, if it held nothing
    if not expected:
        assert mask_secrets(text) == text


def test_the_memo_is_bounded() -> None:
    for n in range(redaction._HOLD_NOTHING_MAX + 10):
        may_hold_secret(f"value-{n}")
    assert len(redaction._holds_nothing) <= redaction._HOLD_NOTHING_MAX
    assert may_hold_secret("value-1") is False
